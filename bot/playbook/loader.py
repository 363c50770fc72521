"""Load and lint playbook files, reporting every problem with its file, line and field.

Parsing keeps line numbers (``bot.playbook.yamlsource``), so every schema error
points at the line of its key. Beyond the schema, the loader checks
what pydantic cannot: actions exist in the catalog, a step's ``with`` uses
exactly its action's parameters, and every template parses, is allowed, and
reads only params the playbook defines.

The current good set lives in ``bot.playbook.registry``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from actions.catalog import CATALOG
from bot.base.errors import PlaybookError, Problem, TemplateError
from bot.playbook.promql_check import promql_errors
from bot.playbook.query_values import raw_alert_values
from bot.playbook.render import TemplateLineError, inspect_template, reads_alert
from bot.playbook.schema import TARGET_ARGS, Playbook
from bot.playbook.yamlsource import (
    KeyPath,
    YamlDocument,
    allowed_keys,
    format_path,
    parse_yaml,
    suggest,
    validation_problems,
)

ALERT_NAMES = frozenset({"alert", "labels", "annotations"})
# Checked before a byte is parsed: every verb and `serve` load the directory, and a
# huge file must be refused at once, not after minutes of parsing.
MAX_FILE_BYTES = 256 * 1024  # the shipped playbooks are 2-4 KB each
MAX_FILES = 1000


# --- checks beyond the schema --------------------------------------------------------


def _strings(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, (*path, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*path, i))


def _at(doc: YamlDocument, path: KeyPath, msg: str, hint: str | None = None, **kw: Any) -> Problem:
    line = kw["line"] if "line" in kw else doc.line_of(path)
    return Problem(doc.file, line, format_path(path), msg, hint)


def _template_problems(
    doc: YamlDocument, path: KeyPath, text: str, defined: set[str] | None
) -> list[Problem]:
    """``defined`` is None for params templates, which see the alert but not params."""
    try:
        info = inspect_template(text)
    except TemplateLineError as exc:
        return [_at(doc, path, exc.message, exc.hint, line=doc.value_line(path, exc.lineno))]
    except TemplateError as exc:
        return [_at(doc, path, exc.message, exc.hint, line=doc.value_line(path))]
    line = doc.value_line(path)
    allowed = ALERT_NAMES if defined is None else ALERT_NAMES | {"params"}
    out = []
    for name in sorted(info.names - allowed):
        if name == "params":
            msg, hint = "params templates cannot read params", "read the alert: labels.x, alert.y"
        else:
            msg, hint = f"unknown name '{name}'", suggest(name, sorted(allowed), "templates read")
        out.append(_at(doc, path, msg, hint, line=line))
    for name in sorted(info.params - defined) if defined is not None else ():
        msg = f"reads params.{name}, but the playbook defines no param '{name}'"
        close = suggest(name, sorted(defined), "defined params") if defined else None
        out.append(_at(doc, path, msg, close or "define it under `params:`", line=line))
    return out


def _args_problems(doc: YamlDocument, base: KeyPath, action: str, args: dict) -> list[Problem]:
    """A step's ``with`` must use exactly its action's parameters."""
    model = CATALOG[action].Params
    known = allowed_keys(model)
    out = [
        _at(doc, (*base, "with", str(key)), f"unknown argument '{key}' for action '{action}'",
            suggest(str(key), known, f"arguments of {action}"))
        for key in args
        if str(key) not in known
    ]  # fmt: skip
    out += [
        _at(doc, (*base, "with"), f"action '{action}' needs argument '{key}'",
            f"add `{key}:` under `with:`")
        for key in (f.alias or n for n, f in model.model_fields.items() if f.is_required())
        if key not in args
    ]  # fmt: skip
    if not out and not any("{{" in s or "{%" in s for _, s in _strings(args, ())):
        # Nothing to render: validate the arguments now rather than mid-incident.
        try:
            model.model_validate(args)
        except ValidationError as exc:
            out += validation_problems(exc, doc, model, (*base, "with"))
    return out


def _mapping(value: Any) -> dict[Any, Any]:
    """``value`` when it is a mapping, else an empty one (the schema reports the type)."""
    return value if isinstance(value, dict) else {}


def _tainted_params(params: dict) -> set[str]:
    """Params whose value is rendered from the alert (its text is untrusted)."""
    out = set()
    for key, value in params.items():
        for _, text in _strings(value, ()):
            try:
                if reads_alert(text):
                    out.add(str(key))
            except TemplateError:
                pass  # reported by the template checks
    return out


def _ranged_params(params: dict) -> set[str]:
    """Params declared as a number with a range (``{value, min, max}``): whatever the
    alert says, the plan holds a number inside it (``render.bounded_number``)."""
    return {str(k) for k, v in params.items()
            if isinstance(v, dict) and "min" in v and "max" in v}


_RANGE_HINT = ("declare the number as a param with a range, e.g. budget: {value: "
               "'{{ annotations.budget | default(20) }}', min: 1, max: 500}, and use "
               "{{ params.budget }}")


def _query_problems(doc: YamlDocument, path: KeyPath, text: str, tainted: set[str]) -> list[Problem]:
    """Alert-derived values reach PromQL only quoted (``"{{ x | promql }}"``) or as a
    number the playbook bounds (a param with ``min``/``max``)."""
    try:
        raw = raw_alert_values(text, tainted)
    except Exception:  # noqa: BLE001 - a syntax error is reported by the template checks
        return []
    out = []
    for lineno, what, why in raw:
        if why == "number":
            msg = (f"query uses alert-derived {what} as a number with no declared range: "
                   "the alert would choose the query's scale")
            hint = _RANGE_HINT
        elif why == "unquoted":
            msg = (f"query puts alert-derived {what} outside a double-quoted label value "
                   "(| promql escapes quotes, not PromQL operators)")
            hint = 'write it inside a label matcher: route="{{ params.route | promql }}"'
        else:
            msg = f"query puts alert-derived {what} into PromQL unescaped"
            hint = ('quote label values: route="{{ params.route | promql }}"; for a number, '
                    + _RANGE_HINT)
        out.append(_at(doc, path, msg, hint, line=doc.value_line(path, lineno)))
    return out


def _allow_problems(doc: YamlDocument, base: KeyPath, step: dict, guard: dict,
                    tainted: set[str]) -> list[Problem]:
    """An automatic step may take a route from the alert only within a declared allowlist."""
    args = _mapping(step.get("with"))
    allow = _mapping(guard.get("allow"))
    out = [
        _at(doc, (*base, "guard", "allow", str(key)), f"allow names '{key}', which is not an "
            "argument of this step", suggest(str(key), sorted(map(str, args)), "arguments"))
        for key in allow if key not in args
    ]  # fmt: skip
    if guard.get("auto") is not True:
        return out
    for arg in TARGET_ARGS:
        texts = [t for _, t in _strings(args.get(arg), ())]
        try:
            derived = any(reads_alert(t, tainted) for t in texts)
        except TemplateError:
            continue  # reported by the template checks
        if derived and arg not in allow:
            out.append(_at(
                doc, (*base, "with", arg),
                f"automatic step takes `{arg}` from alert content with no allowlist",
                f"declare the values it may take: guard.allow.{arg}: [name, ...] "
                "or {group: NAME}; alert text must never choose where a change lands"))
    return out


def _step_problems(
    doc: YamlDocument, i: int, step: dict, defined: set[str], tainted: set[str],
    unbounded: set[str],
) -> list[Problem]:
    out: list[Problem] = []
    base: KeyPath = ("steps", i)
    args = _mapping(step.get("with"))
    action = step.get("action")
    if isinstance(action, str) and action not in CATALOG:
        hint = suggest(action, sorted(CATALOG), "actions in the catalog")
        out.append(_at(doc, (*base, "action"), f"unknown action '{action}'", hint))
    elif isinstance(action, str):
        out += _args_problems(doc, base, action, args)
    for path, text in _strings(args, (*base, "with")):
        out += _template_problems(doc, path, text, defined)
    guard = step.get("guard")
    verify = guard.get("verify") if isinstance(guard, dict) else None
    if isinstance(verify, dict) and isinstance(verify.get("query"), str):
        path = (*base, "guard", "verify", "query")
        out += _template_problems(doc, path, verify["query"], defined)
        out += _query_problems(doc, path, verify["query"], unbounded)
    if isinstance(guard, dict):
        out += _allow_problems(doc, base, step, guard, tainted)
    return out


def _semantic_problems(doc: YamlDocument) -> list[Problem]:
    data: dict[str, Any] = doc.data
    out: list[Problem] = []
    params = _mapping(data.get("params"))
    defined = {str(k) for k in params}
    tainted = _tainted_params(params)
    unbounded = tainted - _ranged_params(params)  # what a query may not use as is
    for path, text in _strings(params, ("params",)):
        out += _template_problems(doc, path, text, None)
    diagnose = data.get("diagnose")
    for i, item in enumerate(diagnose if isinstance(diagnose, list) else []):
        if isinstance(item, dict) and isinstance(item.get("query"), str):
            out += _template_problems(doc, ("diagnose", i, "query"), item["query"], defined)
            out += _query_problems(doc, ("diagnose", i, "query"), item["query"], unbounded)
    steps = data.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict):
            out += _step_problems(doc, i, step, defined, tainted, unbounded)
    return out


# --- files, directories, registry ------------------------------------------------------


def _parse_playbook(text: str, file: str) -> tuple[Playbook | None, YamlDocument | None, list]:
    try:
        doc = parse_yaml(text, file)
    except PlaybookError as exc:
        return None, None, list(exc.problems)
    if not isinstance(doc.data, dict):
        got = "an empty file" if doc.data is None else type(doc.data).__name__
        msg = f"a playbook is a YAML mapping (id, title, class, ...), got {got}"
        return None, doc, [Problem(file, 1, "", msg)]
    problems = _semantic_problems(doc)
    try:
        playbook = Playbook.model_validate(doc.data)
    except ValidationError as exc:
        problems = validation_problems(exc, doc, Playbook) + problems
        playbook = None
    if playbook is not None and not problems:
        problems = [_at(doc, path, message, hint, line=doc.value_line(path))
                    for path, message, hint in promql_errors(playbook)]
    problems.sort(key=lambda p: p.line or 0)
    if playbook is not None and not problems:
        playbook = _default_approvals(playbook)
    return (None if problems else playbook), doc, problems


def _default_approvals(playbook: Playbook) -> Playbook:
    """A step that names no approval gets its action's default (``block_customer``:
    two people); a playbook that writes one keeps it."""
    steps = [s if "approval" in s.guard.model_fields_set else s.model_copy(update={
        "guard": s.guard.model_copy(update={"approval": CATALOG[s.action].default_approval})})
        for s in playbook.steps]
    return playbook.model_copy(update={"steps": steps})


def load_text(text: str, file: str = "<string>") -> Playbook:
    """Parse one playbook from YAML text; raise ``PlaybookError`` listing every problem."""
    playbook, _, problems = _parse_playbook(text, file)
    if problems or playbook is None:
        raise PlaybookError(problems=problems)
    return playbook


def load_file(path: str | Path) -> Playbook:
    """Load one playbook file; raise ``PlaybookError`` listing every problem."""
    return load_text(_read(Path(path)), str(path))


def _read(path: Path) -> str:
    def refuse(msg: str, hint: str) -> PlaybookError:
        return PlaybookError(problems=[Problem(str(path), None, "", msg, hint)])

    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read(MAX_FILE_BYTES + 1)  # never more, whatever stat said
    except OSError as exc:
        raise refuse(f"cannot read file: {exc.strerror or exc}", "check the path") from None
    if max(size, len(data)) > MAX_FILE_BYTES:
        raise refuse(f"file is {max(size, len(data))} bytes; a playbook may be at most "
                     f"{MAX_FILE_BYTES}", "a playbook is a few KB; split or fix the file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"not UTF-8 text (byte {exc.start})", "save the file as UTF-8") from None


def playbook_files(
    paths: Iterable[str | Path], *, kind: str = "playbook"
) -> tuple[list[Path], list[Problem]]:
    """Expand directories to the ``*.yaml``/``*.yml`` files directly inside them."""
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix in (".yaml", ".yml") and ".schema." not in p.name
            )
            if not found:
                problems.append(Problem(str(path), None, "", f"no *.yaml {kind} files here"))
            if len(found) > MAX_FILES:
                problems.append(Problem(str(path), None, "", f"{len(found)} files; at most "
                                        f"{MAX_FILES} are read", "split the directory"))
                found = found[:MAX_FILES]
            files += found
        elif path.exists():
            files.append(path)
        else:
            problems.append(Problem(str(path), None, "", "no such file or directory"))
    return files, problems


def read_sources(paths: Iterable[str | Path]) -> tuple[dict[str, str], list[Problem]]:
    """The text of every playbook file under ``paths`` (file name -> text), and what
    could not be read."""
    files, problems = playbook_files(paths)
    texts: dict[str, str] = {}
    for path in files:
        try:
            texts[str(path)] = _read(path)
        except PlaybookError as exc:
            problems += exc.problems
    return texts, problems


def _load_many(paths: Iterable[str | Path]) -> tuple[dict[str, Playbook], list[Problem]]:
    texts, problems = read_sources(paths)
    playbooks, more = load_sources(texts)
    return playbooks, problems + more


def load_sources(texts: Mapping[str, str]) -> tuple[dict[str, Playbook], list[Problem]]:
    """Playbooks from file texts (a directory just read, or a stored good set)."""
    problems: list[Problem] = []
    found: dict[str, tuple[Playbook, str, int | None]] = {}
    for path, text in texts.items():
        playbook, doc, file_problems = _parse_playbook(text, str(path))
        problems += file_problems
        if playbook is None or doc is None:
            continue
        line = doc.line_of(("id",))
        if playbook.id in found:
            _, other, other_line = found[playbook.id]
            problems.append(
                Problem(
                    str(path),
                    line,
                    "id",
                    f"duplicate playbook id '{playbook.id}': also defined in {other}:{other_line}",
                    "playbook ids must be unique; rename one of them",
                )
            )
            continue
        found[playbook.id] = (playbook, str(path), line)
    return {pid: pb for pid, (pb, _, _) in found.items()}, problems


def lint(paths: Iterable[str | Path]) -> list[Problem]:
    """Every problem in the given files and directories (empty list = all good)."""
    return _load_many(paths)[1]


def load_dir(path: str | Path) -> dict[str, Playbook]:
    """All playbooks in ``path`` (a directory or one file), or ``PlaybookError`` with every problem."""
    playbooks, problems = _load_many([path])
    if problems:
        raise PlaybookError(problems=problems)
    return playbooks

