"""The serving policy as the sandbox sees it: re-read on change, last good kept on error.

Every request asks for the current policy. A ``stat`` per request is cheap; the
file is parsed again only when its identity (inode, mtime, size) changes. A file
that is corrupt, invalid or unreadable leaves the last good policy in force -
a gateway must keep serving while someone fixes the file - and is logged and
counted once per bad version, not once per request.

Writers should replace the file atomically (the policy-file driver does): a new
inode is always noticed, while an in-place rewrite of the same size within one
filesystem timestamp tick could be missed until the next change.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from actions.drivers.policy_file import parse_policy
from actions.policy import ServingPolicy
from bot.base.errors import DriverError

log = logging.getLogger("drills.sandbox.policy")

_Identity = tuple[int, int, int] | str  # (inode, mtime_ns, size) or an error marker


class PolicyReader:
    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float],
        on_error: Callable[[], None] = lambda: None,
        on_loaded: Callable[[float], None] = lambda _ts: None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._clock = clock
        self._on_error = on_error
        self._on_loaded = on_loaded
        self._identity: _Identity | None = None
        self._policy = ServingPolicy()
        self.last_error: str | None = None
        self.last_good_at: float | None = None

    def current(self) -> ServingPolicy:
        if self.path is None:
            return self._policy
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.last_good_at is None:
                # No policy file yet: serve with the defaults, as an empty policy says.
                return self._policy
            self._fail("missing", f"serving policy file {self.path} disappeared")
            return self._policy
        except OSError as exc:
            self._fail("stat-error", f"serving policy file {self.path}: {exc.strerror or exc}")
            return self._policy
        identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        if identity == self._identity:
            return self._policy
        try:
            raw = self.path.read_bytes()
            policy = parse_policy(raw, source=str(self.path))
        except DriverError as exc:
            self._fail(identity, str(exc))
            return self._policy
        except OSError as exc:
            self._fail(identity, f"serving policy file {self.path}: {exc.strerror or exc}")
            return self._policy
        self._identity = identity
        self._policy = policy
        self.last_error = None
        self.last_good_at = self._clock()
        self._on_loaded(self.last_good_at)
        log.info("serving policy loaded from %s", self.path)
        return policy

    def _fail(self, identity: _Identity, message: str) -> None:
        if identity == self._identity:
            return  # this bad version was already logged and counted
        self._identity = identity
        self.last_error = message
        self._on_error()
        log.error("%s; keeping the last good serving policy", message)


def seed_policy_text(routes: dict[str, dict] | None = None) -> str:
    """A serving-policy file listing every route the sandbox serves.

    The bot only changes routes a target lists (an unknown route is never taken as
    an enabled one), so a sandbox policy file names them all; ``routes`` adds
    settings per route, e.g. ``{"chat": {"max_concurrency": 64}}``.
    """
    from drills.sandbox.shape import load_config

    lines = ["version: 1", "routes:"]
    for name in load_config().routes:
        settings = (routes or {}).get(name) or {}
        if not settings:
            lines.append(f"  {name}: {{}}")
            continue
        lines.append(f"  {name}:")
        lines += [f"    {key}: {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"
