"""Which alert-derived values a PromQL query template lets through, and how.

Label and annotation values are untrusted text. In a query they may appear only
quoted inside a double-quoted label value (``route="{{ params.route | promql }}"``)
or as a number the playbook bounds (a param with ``min``/``max``). The loader
reports every other use with its file, line and field.
"""

from __future__ import annotations

from jinja2 import nodes

from bot.playbook.render import _ENV, ALERT_SCOPE, _param_reference

# Filters whose output cannot carry PromQL syntax. ``promql`` quotes a label value; the
# rest make numbers, and a number from the alert is still the alert choosing how a
# query scales (``/ 1e300`` verifies anything), so lint lets alert-derived values into
# a query only quoted, or as a param with a declared range (``NumberParam``).
NUMBER_FILTERS = frozenset({"number", "int", "float", "round", "abs", "length"})


def raw_alert_values(text: str, tainted_params: frozenset[str] | set[str]
                     ) -> list[tuple[int, str, str]]:
    """``(line, what, why)`` for each ``{{ ... }}`` of a query that puts alert-derived
    text into PromQL other than quoted inside a double-quoted label value
    (``"{{ x | promql }}"``). ``why`` is ``"number"`` when it goes through a number
    filter (safe syntax, but an unbounded scale), ``"unquoted"`` for ``| promql``
    outside double quotes (it escapes quotes, not operators), else ``"raw"``. Params
    with a declared range are not in ``tainted_params``: the playbook bounds them."""
    tree = _ENV.parse(text)
    out: list[tuple[int, str, str]] = []
    for output in tree.find_all(nodes.Output):
        quoted = False  # inside "..." of the PromQL, judged from the literal text
        for expr in output.nodes:
            if isinstance(expr, nodes.TemplateData):
                quoted ^= _unescaped_quotes(expr.data) % 2 == 1
                continue
            read = sorted(_alert_reads(expr, tainted_params))
            if not read:
                continue
            if isinstance(expr, nodes.Filter) and expr.name == "promql":
                if not quoted:
                    out.append((expr.lineno or 1, ", ".join(read), "unquoted"))
                continue
            why = ("number" if isinstance(expr, nodes.Filter) and expr.name in NUMBER_FILTERS
                   else "raw")
            out.append((expr.lineno or 1, ", ".join(read), why))
    return out


def _unescaped_quotes(text: str) -> int:
    count, i = 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        count += text[i] == '"'
        i += 1
    return count


def _alert_reads(expr: nodes.Node, tainted: frozenset[str] | set[str]) -> set[str]:
    every = [expr, *expr.find_all(nodes.Node)]  # find_all skips the node itself
    found = {n.name for n in every if isinstance(n, nodes.Name) and n.name in ALERT_SCOPE}
    for node in every:
        ref = _param_reference(node)
        if ref in tainted:
            found.add(f"params.{ref}")
    return found
