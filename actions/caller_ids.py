"""Caller ids: the keys of the serving policy's ``customers`` section, and how a
gateway compares what a request carries with them.

Grammar (the README's "LiteLLM proxy" section says which identity each one is)::

    ID            a plain id: a LiteLLM team id or key hash (never the body's `user`)
    team:ID       the key's team id
    key:HASH      the key (LiteLLM's hash of it, UserAPIKeyAuth.token)
    user:ID       the key's owner (LiteLLM's internal user id)
    P/END_USER    an end user (the body's `user`) of the keys P names, P any of the above

Each part is 1-128 ASCII letters, digits and ``. _ @ : + = -``, starting with a letter
or digit. ASCII only on purpose: a policy cannot hold a lookalike of another id.

Ids compare without case. What a request carries goes through ``normalise``: Unicode
NFKC, accents and invisible characters (zero-width, control, format) dropped, all
whitespace dropped, casefolded, and letters of other scripts that look like Latin ones
folded to them. Whatever then still is not ASCII cannot be told apart from a lookalike
of some id, so ``normalise`` says it is not exact and the gateway treats it as strictly
as the strictest end user of its namespace: a block cannot be evaded by spelling.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

CUSTOMER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+=-]{0,127}$")
CALLER_ID_HELP = ("a caller id is ID, team:ID, key:HASH or user:ID, optionally followed by "
                  "/END_USER; each part 1-128 of ASCII letters, digits and . _ @ : + = - "
                  "(starting with a letter or digit)")
Kind = Literal["any", "team", "key", "user"]
KINDS: tuple[Kind, ...] = ("team", "key", "user")


@dataclass(frozen=True)
class CallerId:
    """A parsed ``customers`` key. ``kind`` "any" is a plain id: team id or key hash."""

    kind: Kind
    principal: str
    end_user: str | None = None


# Characters that render as nothing (or as a blank) but are not whitespace or Cc/Cf.
_INVISIBLE = frozenset([0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0,
                        *range(0x180B, 0x1810), *range(0xFE00, 0xFE10)])
# Lookalikes of Latin letters from other scripts (after casefolding), a precision aid:
# anything still not ASCII after this is treated as suspect anyway (see ``normalise``).
_LOOKALIKES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "н": "h", "і": "i", "ї": "i",
    "ј": "j", "к": "k", "ӏ": "l", "м": "m", "о": "o", "р": "p", "ԛ": "q", "с": "c",
    "ѕ": "s", "т": "t", "у": "y", "ү": "y", "ԝ": "w", "х": "x", "ԁ": "d", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "γ": "y",
    # Armenian, and Latin letters NFKD leaves alone
    "օ": "o", "ս": "u", "ց": "g", "հ": "h", "ո": "n", "ı": "i", "ȷ": "j", "ø": "o",
    "đ": "d", "ħ": "h", "ł": "l",
})


def normalise(raw: str) -> tuple[str, bool] | None:
    """``(canonical, exact)`` for an id a request carries; None if nothing is left.

    ``exact`` is False when characters outside ASCII remain: such an id may be a
    lookalike this table does not know, so it must not escape a limit by it."""
    if raw.isascii() and raw.isprintable() and " " not in raw:
        # The common case, and the same result: NFKC, NFKD and the tables leave
        # visible ASCII alone, and casefold is lower() on it.
        return (raw.lower(), True) if raw else None
    text = unicodedata.normalize("NFKD", raw)
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me", "Zl", "Zp") or ch.isspace() \
                or ord(ch) in _INVISIBLE:
            continue  # accents, zero-width and control characters, whitespace
        kept.append(ch)
    folded = unicodedata.normalize("NFKC", "".join(kept).casefold()).translate(_LOOKALIKES)
    if not folded:
        return None
    return folded, folded.isascii()


def _part(text: str) -> str | None:
    # The same normalisation as a request's ids (on ASCII it is lower-casing).
    done = normalise(text) if CUSTOMER_ID.match(text) else None
    return done[0] if done else None


def parse_customer_id(name: str) -> CallerId | None:
    """The parsed policy key, compared without case; None if it is not a caller id."""
    if not isinstance(name, str):
        return None
    principal, sep, end_user = name.partition("/")
    kind: Kind = "any"
    head, colon, rest = principal.partition(":")
    if colon and head.lower() in KINDS:
        kind, principal = head.lower(), rest  # type: ignore[assignment]
    who = _part(principal)
    if who is None:
        return None
    if not sep:
        return CallerId(kind, who)
    user = _part(end_user)
    return CallerId(kind, who, user) if user is not None else None


def is_customer_id(name: str) -> bool:
    return parse_customer_id(name) is not None
