"""YAML that remembers where things are, and pydantic errors mapped back to lines.

The document is composed into a node tree first (safe loading only), so each
pydantic error, whose ``loc`` is a path such as ``steps.0.guard.aproval``, can be
reported at the line of that key. Duplicate keys, which YAML silently resolves
to the last one, are refused. Used by the playbook loader and the playbook-test
runner, so both report problems the same way.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from bot.base.errors import PlaybookError, Problem

KeyPath = tuple[str | int, ...]
# A shipped playbook has about 150 nodes. The pure-Python composer takes ~40 us a
# node, so this bounds the worst file at under a second; aliases that expand a
# small file into a huge tree count too.
_MAX_NODES = 20_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class YamlDocument:
    """Parsed data plus, for every key path, the line of its key (or list item)."""

    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    nodes: dict[KeyPath, yaml.Node] = field(default_factory=dict)

    def line_of(self, path: Iterable[str | int]) -> int | None:
        """Line of the longest prefix of ``path`` present in the file (1-based)."""
        path = tuple(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return 1 if self.lines or self.data is not None else None

    def value_line(self, path: KeyPath, inner_line: int = 1) -> int | None:
        """Line of line ``inner_line`` of the string value at ``path`` (block scalars too)."""
        node = self.nodes.get(path)
        if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
            return node.start_mark.line + 1 + inner_line
        return node.start_mark.line + 1 if node is not None else self.line_of(path)


def format_path(path: Iterable[str | int]) -> str:
    """``('steps', 0, 'guard', 'aproval')`` -> ``steps[0].guard.aproval``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _CountingLoader(yaml.SafeLoader):
    """A safe loader that stops composing past ``_MAX_NODES`` nodes.

    The limit holds *while* the tree is built, not after: a file of millions of
    tiny nodes is refused as soon as it crosses the limit, in bounded memory.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.composed += 1
        if self.composed > _MAX_NODES:
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(
                problem=f"document too large (more than {_MAX_NODES} nodes)", problem_mark=mark
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Safe-load one YAML document; raise ``PlaybookError`` with line numbers on any problem."""
    loader = _CountingLoader(text)
    try:
        root = loader.get_single_node()
        doc = YamlDocument(file=file, data=None)
        problems: list[Problem] = []
        if root is not None:
            _index(root, (), doc, problems, set(), [0])
        if problems:
            raise PlaybookError(problems=problems)
        doc.data = loader.construct_document(root) if root is not None else None
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = f" (column {mark.column + 1})" if mark else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise PlaybookError(
            problems=[
                Problem(file, line, "", f"invalid YAML{col}: {what}", _yaml_hint(exc.problem))
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise PlaybookError(problems=[Problem(file, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()


def _yaml_hint(problem: str | None) -> str:
    if problem and ("'\\t'" in problem or "tab" in problem):
        return "indent with spaces, not tabs"
    return "check the indentation and quoting on that line; quote strings containing ': ' or '{'"


def _index(
    node: yaml.Node,
    path: KeyPath,
    doc: YamlDocument,
    problems: list[Problem],
    stack: set[int],
    count: list[int],
) -> None:
    count[0] += 1
    if count[0] > _MAX_NODES:
        raise yaml.YAMLError(f"document too large (more than {_MAX_NODES} nodes after aliases)")
    if id(node) in stack:
        raise yaml.MarkedYAMLError(problem="recursive alias", problem_mark=node.start_mark)
    stack.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, Any], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                _index(value_node, path, doc, problems, stack, count)
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            line = key_node.start_mark.line + 1
            sub = (*path, key)
            if (key_node.tag, key) in first:
                problems.append(
                    Problem(
                        doc.file,
                        line,
                        format_path(sub),
                        f"duplicate key '{key}' (first at line {first[key_node.tag, key]})",
                        "YAML keeps only the last one; remove or rename one of them",
                    )
                )
                continue
            first[key_node.tag, key] = line
            doc.lines[sub], doc.nodes[sub] = line, value_node
            _index(value_node, sub, doc, problems, stack, count)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, i)
            doc.lines[sub], doc.nodes[sub] = item.start_mark.line + 1, item
            _index(item, sub, doc, problems, stack, count)
    stack.discard(id(node))


# --- pydantic errors -> problems -----------------------------------------------------


def validation_problems(
    exc: ValidationError, doc: YamlDocument, model: type[BaseModel], prefix: KeyPath = ()
) -> list[Problem]:
    """One ``Problem`` per pydantic error, with the line and a hint where we can help."""
    out = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        message = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
        hint = None
        if err["type"] == "extra_forbidden":
            allowed = allowed_keys(_model_at(model, err["loc"][:-1]))
            message = f"unknown key '{loc[-1]}'"
            hint = suggest(str(loc[-1]), allowed, "allowed keys here")
        elif err["type"] == "missing":
            message = f"missing required key '{loc[-1]}'"
        elif err["type"] == "literal_error":
            allowed = re.findall(r"'([^']*)'", (err.get("ctx") or {}).get("expected", ""))
            hint = suggest(str(err.get("input")), allowed, "allowed values")
        out.append(Problem(doc.file, doc.line_of(loc), format_path(loc), message, hint))
    return out


def suggest(got: str, allowed: Iterable[str], label: str) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(got, allowed, n=1, cutoff=0.6)
    listing = f"{label}: {', '.join(allowed)}"
    return f"did you mean `{close[0]}`? ({listing})" if close else listing


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            tp = models[0] if models else args[0]
        else:
            return tp


def _model_at(root: type[BaseModel], loc: Iterable[str | int]) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` (None if not a model)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            found = [f for n, f in tp.model_fields.items() if part in (n, f.alias)]
            if not found:
                return None
            tp = found[0].annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def allowed_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]
