"""Numbers in playbook templates: the ``number`` filter, and params with a range.

Alert text is untrusted; a number taken from it decides how much a check scales
(``spend / hourly_budget_usd``). ``number`` makes sure it is a finite number;
``in_range`` makes sure it is one the playbook allows (``NumberParam``), naming the
param, the value and the range when it is not.
"""

from __future__ import annotations

from typing import Any

from bot.base.errors import TemplateError
from bot.playbook.schema import NumberParam


def number(value: Any) -> int | float:
    """A value that must be a finite number (``{{ annotations.budget | number }}``).

    Syntax-safe, not scale-safe: in a query, lint wants an alert-derived number as a
    param with a declared range (``NumberParam``, checked by ``bounded_number``).

    Unlike ``float``, which turns anything unparseable into 0.0, a non-number is an
    error: alert text put into a query can never become PromQL, and a typo in an
    annotation never silently becomes a zero budget.
    """
    if isinstance(value, bool):
        raise TemplateError(f"not a number: {value!r}")
    if isinstance(value, int | float):
        out: float = float(value)
    else:
        text = str(value).strip()
        if len(text) > 64:
            raise TemplateError(f"not a number: {text[:64]!r}...")
        try:
            out = float(text)
        except ValueError:
            raise TemplateError(
                f"not a number: {text!r}", hint="the value comes from the alert; fix its source"
            ) from None
    if out != out or out in (float("inf"), float("-inf")):
        raise TemplateError(f"not a finite number: {value!r}")
    return int(out) if out.is_integer() and abs(out) < 2**53 else out


def in_range(name: str, param: NumberParam, raw: Any) -> int | float:
    """``raw`` (the rendered ``param.value``) as a number inside the param's range.

    The alert may choose the number, the playbook the range it falls in: a value
    outside refuses the plan (an alert saying ``1e300`` or ``-1`` never scales a check).
    """
    where = f"params.{name}"
    try:
        out = number(raw)
    except TemplateError as exc:
        raise TemplateError(f"{where}: {exc.message} (the playbook allows "
                            f"{param.min:g}..{param.max:g})",
                            hint="the value comes from the alert; fix its source") from None
    if not param.min <= out <= param.max:
        raise TemplateError(
            f"{where} = {raw!s:.64} is outside {param.describe_range()} the playbook "
            "allows",
            hint=f"fix the alert's source, or widen params.{name}.min/max in the playbook "
                 "if the value is genuine")
    return out
