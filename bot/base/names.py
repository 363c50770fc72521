"""Names the bot writes into other systems: prompt versions, model names, release ids,
route names.

They reach the serving-policy file, the gateway's upstream headers, Prometheus
label values and chat. A newline in one would split a header or a YAML scalar, a
control character would print other than it reads, and a leading or trailing space
would make a second name that looks like the first. They are refused where they
enter (a command's option, a playbook step's rendered params, an SLO file), naming
the field, rather than cleaned on the way out.
"""

from __future__ import annotations

import re

# Every C0/C1 control character (tab and newline too: no name holds one), the line and
# paragraph separators, and the bidirectional overrides and isolates.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a name, or None when it can."""
    shown = repr(value[:60]) + ("..." if len(value) > 60 else "")
    if not value.strip():
        return "is empty"
    if m := _CONTROL.search(value):
        return f"{shown} holds a control character ({m.group()!r} at {m.start()})"
    if value != value.strip():
        return f"{shown} starts or ends with whitespace"
    return None


def check_name(value: str) -> str:
    """``value``, or ValueError saying why it is no name (pydantic names the field)."""
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value
