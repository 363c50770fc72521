"""What one response or failure says about quality, seen from the request path.

Pure functions of the request's parameters and LiteLLM's response objects (or the
dicts they serialise to), so the unit tests and the bench feed them directly. The
hook (hook.py) calls them from LiteLLM's callbacks and metrics.py counts the verdicts.

- :func:`validity`: when the request asked for JSON (``response_format``
  ``json_object`` / ``json_schema``, or ``tools``), whether the answer parses and
  validates against the schema given. Schemas of the common keywords (type,
  required, properties, items, enum, additionalProperties) are checked by a small
  checker here; any other schema by ``jsonschema``, a dependency of litellm itself
  (so nothing new is installed into the proxy).
- :func:`refused`: ``message.refusal``, ``finish_reason: content_filter``, or the
  content matching one of a short list of refusal patterns.
- :func:`safety_flagged`: ``finish_reason: content_filter`` or a configured
  LiteLLM guardrail that flagged or intervened.
- :func:`failure_kind`: a context-window rejection (LiteLLM's
  ``ContextWindowExceededError``, or an upstream 400 ``context_length_exceeded``)
  apart from every other provider error.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema

# Short on purpose: a refusal the model states plainly. Longer lists catch ordinary
# answers ("I can't find that file"), so these anchor at the start of the answer.
DEFAULT_REFUSAL_PATTERNS: tuple[str, ...] = (
    r"^\s*(i'?m|i am) sorry,? but i (can(no|')?t|won'?t|am unable to)",
    r"^\s*i (can(no|')?t|won'?t|am unable to) (help|assist|comply|provide) with",
    r"^\s*as an ai( language model)?,? i (can(no|')?t|won'?t)",
)

FLAGGED_GUARDRAIL = frozenset({"guardrail_flagged", "guardrail_intervened"})


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """``obj[key]`` or ``obj.key``: LiteLLM hands us pydantic objects or plain dicts."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def requested_schema(params: Mapping[str, Any]) -> tuple[str, Any] | None:
    """What output shape the request asked for: ("json", schema or None),
    ("tools", {tool name: parameters schema}) or None when it asked for free text."""
    fmt = params.get("response_format")
    kind = _get(fmt, "type")
    if kind == "json_schema":
        spec = _get(fmt, "json_schema") or {}
        return "json", _get(spec, "schema")
    if kind == "json_object":
        return "json", None
    tools = params.get("tools")
    if isinstance(tools, list) and tools:
        schemas: dict[str, Any] = {}
        for tool in tools:
            fn = _get(tool, "function")
            name = _get(fn, "name")
            if isinstance(name, str):
                schemas[name] = _get(fn, "parameters")
        return "tools", schemas
    return None


# The keywords the small checker below knows; a schema using any other goes to jsonschema.
SIMPLE_KEYWORDS = frozenset({"type", "required", "properties", "items", "enum",
                             "additionalProperties", "description", "title", "$schema"})
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
}


def _simple(schema: Any) -> bool:
    """Whether the small checker covers ``schema`` exactly (all of it, nested too)."""
    if not isinstance(schema, dict) or not SIMPLE_KEYWORDS.issuperset(schema):
        return False
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if not all(k in _TYPES for k in kinds):
        return False
    extra = schema.get("additionalProperties", False)
    props = schema.get("properties", {})
    items = schema.get("items", {})
    return (isinstance(extra, bool) and isinstance(props, dict)
            and all(_simple(p) for p in props.values())
            and isinstance(schema.get("required", []), list)
            and isinstance(schema.get("enum", []), list)
            and (items == {} or _simple(items)))


def _check(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind is not None and not any(_TYPES[k](value) for k in
                                    (kind if isinstance(kind, list) else [kind])):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if any(r not in value for r in schema.get("required", [])):
            return False
        if schema.get("additionalProperties", True) is False and any(k not in props
                                                                      for k in value):
            return False
        return all(_check(v, props[k]) for k, v in value.items() if k in props)
    if isinstance(value, list) and schema.get("items"):
        return all(_check(v, schema["items"]) for v in value)
    return True


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    # Building a validator walks the schema; a route's schema repeats on every request.
    # The common shapes (type/required/properties/items/enum) get the small checker,
    # 15x faster than jsonschema's on a 2 KB answer (bench/bench_hook_metrics.py).
    schema = json.loads(schema_json)
    if _simple(schema):
        return lambda value: _check(value, schema)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema).is_valid


def _valid_against(value: Any, schema: Any) -> bool:
    if not isinstance(schema, dict) or not schema:
        return True
    try:
        key = json.dumps(schema, sort_keys=True)
        validator = _validator(key)
    except (TypeError, ValueError, jsonschema.SchemaError):
        return True  # a schema we cannot use is the caller's problem, not the answer's
    return bool(validator(value))


def _message(response: Any) -> tuple[Any, str | None]:
    choices = _get(response, "choices") or []
    first = choices[0] if choices else None
    return _get(first, "message") or _get(first, "delta"), _get(first, "finish_reason")


def validity(params: Mapping[str, Any], response: Any) -> bool | None:
    """True/False when the request asked for JSON or tools, None when it did not."""
    wanted = requested_schema(params)
    if wanted is None:
        return None
    kind, schema = wanted
    message, _ = _message(response)
    if kind == "tools":
        calls = _get(message, "tool_calls") or []
        if not calls:
            # tool_choice "auto" lets the model answer in words; that is no malformed call.
            return True
        for call in calls:
            fn = _get(call, "function")
            try:
                args = json.loads(_get(fn, "arguments") or "")
            except (TypeError, ValueError):
                return False
            if not _valid_against(args, (schema or {}).get(_get(fn, "name"))):
                return False
        return True
    content = _get(message, "content")
    if not isinstance(content, str):
        return False
    try:
        value = json.loads(content)
    except ValueError:
        return False
    if schema is None:  # json_object: any JSON object
        return isinstance(value, dict)
    return _valid_against(value, schema)


@functools.lru_cache(maxsize=16)
def compile_patterns(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def refused(response: Any, patterns: Iterable[str] = DEFAULT_REFUSAL_PATTERNS) -> bool:
    message, finish = _message(response)
    if finish == "content_filter" or _get(message, "refusal"):
        return True
    content = _get(message, "content")
    pattern = compile_patterns(tuple(patterns))
    # Only the head of the answer: a refusal says so first, and a long answer stays cheap.
    return bool(pattern and isinstance(content, str) and pattern.search(content[:300]))


def safety_flagged(response: Any, guardrails: Any = None) -> bool:
    """The provider's content filter stopped the answer, or a guardrail flagged it."""
    _, finish = _message(response)
    if finish == "content_filter":
        return True
    records = guardrails if isinstance(guardrails, list) else [guardrails] if guardrails else []
    return any(_get(r, "guardrail_status") in FLAGGED_GUARDRAIL for r in records)


def failure_kind(exc: BaseException) -> str:
    """"context_overflow" for a request too long for the model's window, else "error"."""
    import litellm  # the proxy's; imported here so the pure helpers above need none

    if isinstance(exc, litellm.ContextWindowExceededError):
        return "context_overflow"
    status = getattr(exc, "status_code", None)
    text = str(getattr(exc, "message", "") or exc).lower()
    if status == 400 and ("context_length_exceeded" in text or "maximum context length" in text):
        return "context_overflow"
    return "error"


def output_tokens(response: Any) -> int | None:
    n = _get(_get(response, "usage"), "completion_tokens")
    return int(n) if isinstance(n, int | float) else None
