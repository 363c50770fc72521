"""Sandboxed Jinja2 for playbook templates (params, step arguments, PromQL queries).

Playbook templates are *expressions*, not programs: ``{{ labels.route }}``,
``{{ params.cap | int // 2 }}``, ``route="{{ params.route | promql }}"``. They are
written by reviewers but fed with alert labels, which are untrusted text, so:

- label and annotation values are data: they are put in the context, never
  rendered as templates (a label holding ``{{ 7*7 }}`` stays exactly that);
- statements (loops, macros, ``set``, includes...), attribute names starting
  with ``_`` and calls to anything but a few read-only methods are refused by
  ``check_template`` at lint time *and* again by the sandbox at render time;
- ``*``, ``**``, ``+`` and ``%`` are intercepted so ``'x' * 10**9`` or
  ``9**9**9`` fails at once instead of eating memory or CPU;
- a missing label is an error naming the template's location and the label,
  never an empty string that would silently widen a mitigation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2 import TemplateError as JinjaError
from jinja2.filters import FILTERS
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from bot.base.errors import TemplateError
from bot.intake.alert import Alert
from bot.playbook.numbers import in_range, number
from bot.playbook.schema import NumberParam, Playbook, Step

MAX_OUTPUT = 4096
# Intermediate values may be longer than the output (e.g. a long annotation that
# is then truncated) but not unboundedly so.
MAX_INTERMEDIATE = 65536
MAX_INT_BITS = 4096

ALLOWED_FILTERS = (
    "default", "int", "float", "round", "abs", "lower", "upper", "trim", "replace", "min",
    "max", "length", "join", "first", "last", "string", "tojson", "truncate",
)  # fmt: skip
# Read-only methods an expression may call, e.g. ``labels.get('route', 'chat')``.
ALLOWED_METHODS = frozenset(
    {
        "get", "keys", "values", "items", "lower", "upper", "strip", "lstrip", "rstrip",
        "split", "rsplit", "startswith", "endswith", "removeprefix", "removesuffix",
        "count", "find", "title", "capitalize",
    }
)  # fmt: skip

_FORBIDDEN_NODES: dict[type[nodes.Node], str] = {
    nodes.For: "loops ({% for %})",
    nodes.Macro: "macros",
    nodes.CallBlock: "call blocks",
    nodes.Assign: "{% set %}",
    nodes.AssignBlock: "{% set %} blocks",
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
    nodes.Block: "{% block %}",
    nodes.FilterBlock: "{% filter %} blocks",
    nodes.With: "{% with %}",
    nodes.ScopedEvalContextModifier: "{% autoescape %}",
    nodes.EvalContextModifier: "{% autoescape %}",
}


class TemplateLineError(TemplateError):
    """A template is refused at a known place; ``lineno`` is the line inside it (1-based)."""

    def __init__(self, message: str, *, lineno: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.lineno = lineno


# --- the environment -----------------------------------------------------------------


class _Scope(dict):
    """A context mapping that knows what it holds, for precise missing-name errors."""

    _what = "key"


class _Labels(_Scope):
    _what = "label"


class _Annotations(_Scope):
    _what = "annotation"


class _Params(_Scope):
    _what = "param"


class _Undefined(StrictUndefined):
    """StrictUndefined whose message names the label/param that is missing."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        obj, name = self._undefined_obj, self._undefined_name
        if isinstance(obj, _Scope):
            return f"{obj._what} {name!r} is not set"
        if isinstance(obj, dict):
            return f"key {name!r} is not set"
        return super()._undefined_message


def _too_long(what: str, size: int, limit: int) -> TemplateError:
    return TemplateError(
        f"{what} would be {size} long (limit {limit})",
        hint="templates compute small values; shorten the expression",
    )


def _len_after_repeat(value: Any, times: Any) -> int | None:
    if isinstance(value, str | list | tuple) and isinstance(times, int):
        return len(value) * max(times, 0)
    return None


def _int_bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _safe_replace(s: Any, old: Any, new: Any, count: int | None = None) -> str:
    # Chained replaces grow geometrically ('x'|replace('x','xxxxxxxxxx')|...), so
    # compute the size before building the string.
    s, old, new = str(s), str(old), str(new)
    hits = (len(s) + 1 if old == "" else s.count(old)) if count is None else count
    size = len(s) + max(hits, 0) * (len(new) - len(old))
    if size > MAX_INTERMEDIATE:
        raise _too_long("replace result", size, MAX_INTERMEDIATE)
    return s.replace(old, new) if count is None else s.replace(old, new, count)


def _safe_join(value: Any, d: str = "", attribute: Any = None) -> str:
    if attribute is not None:
        raise TemplateError("join(attribute=...) is not supported in playbook templates")
    parts = [str(v) for v in value]
    size = sum(map(len, parts)) + len(d) * max(len(parts) - 1, 0)
    if size > MAX_INTERMEDIATE:
        raise _too_long("join result", size, MAX_INTERMEDIATE)
    return str(d).join(parts)


def promql_escape(value: Any) -> str:
    """Escape a value for use inside a double-quoted PromQL label matcher."""
    text = str(value)
    for raw, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(raw, escaped)
    return text


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            size = _len_after_repeat(left, right) or _len_after_repeat(right, left)
            if size is not None and size > MAX_INTERMEDIATE:
                raise _too_long("repeated value", size, MAX_INTERMEDIATE)
            if _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
                raise _too_long("integer (bits)", _int_bits(left) + _int_bits(right), MAX_INT_BITS)
        elif op == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                bits = max(_int_bits(left) - 1, 1) * right
                if bits > MAX_INT_BITS:
                    raise _too_long("power (bits)", bits, MAX_INT_BITS)
        elif op == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                size = len(left) + len(right)
                if size > MAX_INTERMEDIATE:
                    raise _too_long("concatenation", size, MAX_INTERMEDIATE)
        elif op == "%" and isinstance(left, str):
            # printf-style formatting can pad to any width ('%999999999d').
            raise TemplateError(
                "string formatting with % is not allowed", hint="join values with ~ instead"
            )
        try:
            return self.binop_table[op](left, right)
        except OverflowError as exc:
            raise TemplateError(f"number too large: {exc}") from None

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        name = getattr(__obj, "__name__", None)
        if getattr(__obj, "__self__", None) is None or name not in ALLOWED_METHODS:
            raise SecurityError(f"calling {name or type(__obj).__name__!r} is not allowed")
        return super().call(__context, __obj, *args, **kwargs)


def _make_env() -> _Sandbox:
    env = _Sandbox(undefined=_Undefined, autoescape=False, keep_trailing_newline=True)
    env.globals.clear()  # no range, lipsum, dict, cycler, joiner, namespace
    env.filters = {name: FILTERS[name] for name in ALLOWED_FILTERS}
    env.filters.update(replace=_safe_replace, join=_safe_join, promql=promql_escape,
                       number=number)
    return env


_ENV = _make_env()


# --- static checks -------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateInfo:
    """What a template reads: top-level names, and ``params.X`` names where static."""

    names: frozenset[str]
    params: frozenset[str]


def inspect_template(text: str) -> TemplateInfo:
    """Parse and check a template; raise ``TemplateError`` for anything not allowed."""
    try:
        tree = _ENV.parse(text)
    except JinjaError as exc:
        lineno = getattr(exc, "lineno", None) or 1
        raise TemplateLineError(
            f"template syntax error: {getattr(exc, 'message', None) or exc}", lineno=lineno
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer literal too long to parse
        raise TemplateLineError(f"template cannot be parsed: {exc}", lineno=1) from None
    names: set[str] = set()
    params: set[str] = set()
    for node in _post_order(tree):
        _check_node(node)
        if isinstance(node, nodes.Name):
            names.add(node.name)
        ref = _param_reference(node)
        if ref:
            params.add(ref)
    return TemplateInfo(frozenset(names), frozenset(params))


def _post_order(node: nodes.Node) -> Iterator[nodes.Node]:
    # Children first, so ``''.__class__.__mro__`` is reported at its first step.
    for child in node.iter_child_nodes():
        yield from _post_order(child)
    yield node


def reads_alert(text: str, tainted_params: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether a (checked) template reads alert content, directly or through a param."""
    info = inspect_template(text)
    return bool(info.names & ALERT_SCOPE) or bool(info.params & set(tainted_params))


ALERT_SCOPE = frozenset({"alert", "labels", "annotations"})


def check_template(text: str) -> None:
    """Raise ``TemplateError`` if ``text`` does not parse or uses a forbidden construct."""
    inspect_template(text)


def _forbidden(node: nodes.Node, what: str, hint: str | None = None) -> TemplateError:
    where = f"line {node.lineno} of the template: " if node.lineno > 1 else ""
    return TemplateLineError(
        f"{where}{what} not allowed in playbook templates",
        lineno=node.lineno or 1,
        hint=hint or "templates are expressions: {{ labels.x }}, {{ params.y | int }}",
    )


def _check_node(node: nodes.Node) -> None:
    for kind, what in _FORBIDDEN_NODES.items():
        if isinstance(node, kind):
            raise _forbidden(node, what)
    if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
        raise _forbidden(node, f"attribute {node.attr!r} (names starting with _)")
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
        and node.arg.value.startswith("_")
    ):
        raise _forbidden(node, f"item {node.arg.value!r} (names starting with _)")
    if isinstance(node, nodes.Filter) and node.name not in _ENV.filters:
        raise _forbidden(
            node,
            f"filter {node.name!r}",
            hint=f"allowed filters: {', '.join(sorted(_ENV.filters))}",
        )
    if isinstance(node, nodes.Call):
        callee = node.node
        if not (isinstance(callee, nodes.Getattr) and callee.attr in ALLOWED_METHODS):
            called = callee.attr if isinstance(callee, nodes.Getattr) else _describe(callee)
            raise _forbidden(
                node,
                f"calling {called!r}",
                hint=f"use filters; allowed methods: {', '.join(sorted(ALLOWED_METHODS))}",
            )


def _describe(node: nodes.Node) -> str:
    return node.name if isinstance(node, nodes.Name) else type(node).__name__


def _param_reference(node: nodes.Node) -> str | None:
    """``params.x`` or ``params['x']`` -> ``x``; anything dynamic -> None."""
    if isinstance(node, nodes.Getattr):
        target, key = node.node, node.attr
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        target, key = node.node, node.arg.value
    else:
        return None
    if isinstance(target, nodes.Name) and target.name == "params" and isinstance(key, str):
        return key
    return None


# --- rendering -----------------------------------------------------------------------


@lru_cache(maxsize=2048)
def _compiled(text: str) -> Any:
    check_template(text)
    return _ENV.from_string(text)


def alert_context(alert: Alert) -> dict[str, Any]:
    """The names every template sees. Plain data only: no model methods to reach."""
    labels = _Labels(alert.labels)
    annotations = _Annotations(alert.annotations)
    view = _Scope(
        labels=labels,
        annotations=annotations,
        status=alert.status,
        fingerprint=alert.fingerprint,
        starts_at=alert.starts_at.isoformat(),
        source=alert.source,
        alertname=alert.alertname,
    )
    return {"alert": view, "labels": labels, "annotations": annotations}


def render_string(text: str, context: Mapping[str, Any], *, where: str) -> str:
    """Render one template; every failure is a ``TemplateError`` naming ``where``."""
    try:
        template = _compiled(text)
        out = template.render(**context)
    except TemplateError as exc:
        raise TemplateError(f"{where}: {exc.message}", hint=exc.hint) from None
    except SecurityError as exc:
        raise TemplateError(f"{where}: not allowed: {exc}") from None
    except JinjaError as exc:  # UndefinedError and other runtime errors
        message = getattr(exc, "message", None) or str(exc)
        hint = None
        if "is not set" in message or "undefined" in message:
            hint = "if it may be missing, add | default('x'), e.g. {{ labels.route | default('chat') }}"
        raise TemplateError(f"{where}: {message}", hint=hint) from None
    except (ArithmeticError, ValueError, TypeError, LookupError) as exc:
        raise TemplateError(f"{where}: {type(exc).__name__}: {exc}") from None
    if len(out) > MAX_OUTPUT:
        raise _too_long(f"{where}: rendered output", len(out), MAX_OUTPUT)
    return out


def _render_value(value: Any, context: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str):
        return render_string(value, context, where=where)
    if isinstance(value, dict):
        return {k: _render_value(v, context, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, context, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def render_params(playbook: Playbook, alert: Alert) -> dict[str, Any]:
    """The playbook's params rendered against ``alert`` (params see the alert only)."""
    context = alert_context(alert)
    return {k: render_param(k, v, context) for k, v in playbook.params.items()}


def render_param(name: str, value: Any, context: Mapping[str, Any]) -> Any:
    """One param; a ``NumberParam`` becomes a number inside its range, or an error."""
    raw = _render_value(value.value if isinstance(value, NumberParam) else value, context,
                        f"params.{name}")
    return in_range(name, value, raw) if isinstance(value, NumberParam) else raw


def _with_params(params: Mapping[str, Any], alert: Alert) -> dict[str, Any]:
    return {**alert_context(alert), "params": _Params(params)}


def render_step_args(step: Step, params: Mapping[str, Any], alert: Alert) -> dict[str, Any]:
    """A step's ``with`` rendered recursively; strings stay strings (params models coerce).

    Mapping keys are literal (e.g. model names in ``shift_traffic.weights``).
    """
    context = _with_params(params, alert)
    where = f"steps[{step.id}].with"
    return {k: _render_value(v, context, f"{where}.{k}") for k, v in step.with_.items()}


def render_query(
    text: str, params: Mapping[str, Any], alert: Alert, *, where: str = "query"
) -> str:
    """A PromQL query (diagnose or verify) rendered with the alert and params."""
    return render_string(text, _with_params(params, alert), where=where)
