"""Who holds a claim, and whether that process is still there.

A claim (a run in ``applying`` or ``reverting``, a drill, an outbox item) records
its owner as ``host:pid:start``; ``start`` is the process's start time in clock
ticks since boot, so a pid the kernel reused for another process never passes
for the dead owner. Work is reconciled only when its owner is gone: a claim held
by a live process (the CLI beside ``serve``, a slow LiteLLM reload) is left alone.

On another host the pid cannot be checked; such a claim is live until it is
older than ``stale_after`` (the store's lease handles replicas).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from pathlib import Path


def _stat(pid: int) -> list[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The command name in field 2 may hold spaces: split after its closing parenthesis
    # (so field 3, the state, is [0] and field 22, starttime, is [19]).
    return stat.rpartition(")")[2].split()


def _start_ticks(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


_names: dict[int, str] = {}


def this_process() -> str:
    pid = os.getpid()  # looked up each time: a forked child is another owner
    if pid not in _names:
        _names[pid] = f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '0'}"
    return _names[pid]


def owner_alive(owner: str | None, *, claimed_at: datetime | None = None,
                now: datetime | None = None,
                stale_after: timedelta = timedelta(minutes=15)) -> bool:
    """Is the process named by ``owner`` still running?"""
    if not owner:
        return False  # written before claims had owners: nobody holds it
    parts = owner.split(":")
    host, pid_text = parts[0], parts[1] if len(parts) > 1 else ""
    start = parts[2] if len(parts) > 2 else None
    if host != socket.gethostname() or not pid_text.isdigit():
        if claimed_at is None or now is None:
            return True
        return now - claimed_at < stale_after
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # it exited; only its parent has not collected it yet
    if start is None or start == "0":
        return True
    return (fields[19] if len(fields) > 19 else None) == start
