"""The policy-file driver: the serving policy as a YAML file on disk.

The sandbox gateway and the LiteLLM pre-call hook read this file on every
request, so a write must never expose a half-written file: we write a temp file
in the same directory, fsync it, keep the previous version as ``<name>.prev``,
``os.replace`` it into place and fsync the directory. Readers therefore see the
old policy or the new one, never a mix.

Each change the bot makes keeps its own version (``<name>.versions/RUN-7.before``
and ``.after``): its revert puts the exact bytes back, comments and layout
included, when the file is still exactly as that change left it; otherwise the
runner reverts values and reports what it left alone. Writers (only the bot, but possibly
several processes of it) are serialised by an exclusive ``flock`` on a sidecar
``<name>.lock`` file, so two read-modify-write cycles cannot lose an update.

Fencing (``actions/fencing.py``): a write made under a fence records it in the
file's ``change`` mark (run id, token, apply or revert) in the same atomic
replace, and a write whose token is lower than the mark's is refused. Every
write under a fence also appends one line to ``<name>.changes``, the target's
own change log (JSON lines: at, run, token, op), which chaos tests read to count
applies and reverts without trusting the bot's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from actions.drivers.atomic_file import atomic_replace
from actions.fencing import Fence, StaleFence, current_fence
from actions.policy import ChangeMark, ServingPolicy, UnknownRoute
from bot.base.errors import DriverError

# libyaml's C loader/dumper are several times faster than the pure-Python ones,
# and the file is read on every apply, verify and revert.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PolicyFileDriver:
    """Reads and atomically rewrites a serving-policy YAML file."""

    name = "policy-file"

    def __init__(
        self,
        path: Path,
        *,
        create_missing: bool = False,
        add_routes: bool = False,
        actor: str = "llm-incident",
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.path = Path(path)
        self.create_missing = create_missing
        # Only for a companion file whose routes are served elsewhere (LiteLLM's
        # config): there a route missing from the file is still a real route.
        self.add_routes = add_routes
        # Recorded as ``updated_by`` when a write gives no reason.
        self.actor = actor
        self._clock = clock

    @property
    def prev_path(self) -> Path:
        return self.path.with_name(self.path.name + ".prev")

    @property
    def versions_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".versions")

    def _version(self, change_id: str, which: str) -> Path:
        if not change_id.replace("-", "").isalnum():
            raise DriverError(f"bad change id {change_id!r} for a policy file version",
                              hint="a run id such as RUN-7")
        return self.versions_dir / f"{change_id}.{which}"

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    # -- the ServingDriver protocol -------------------------------------------------

    async def read(self) -> ServingPolicy:
        # File I/O is quick but blocking; a thread keeps the event loop responsive.
        return await asyncio.to_thread(self._read)

    async def write(self, updates: dict[str, dict[str, Any]], *, reason: str, action: str) -> None:
        await asyncio.to_thread(self._write, updates, reason, action)

    # -- the KeepsVersions capability ---------------------------------------------------

    async def write_versioned(self, updates: dict[str, dict[str, Any]], *, reason: str,
                              action: str, change_id: str) -> None:
        await asyncio.to_thread(self._write, updates, reason, action, change_id)

    async def restore_version(self, change_id: str, *, reason: str) -> bool:
        return await asyncio.to_thread(self._restore, change_id)

    async def forget_version(self, change_id: str) -> None:
        await asyncio.to_thread(self._forget, change_id)

    def _restore(self, change_id: str) -> bool:
        before, after = self._version(change_id, "before"), self._version(change_id, "after")
        fence = current_fence()
        with self._locked():
            try:
                raw = self.path.read_bytes()
                if raw != after.read_bytes():
                    return False  # changed since (by a person or another run): values only
                old = before.read_bytes()
            except FileNotFoundError:
                return False
            mark = self._check_fence(parse_policy(raw, source=str(self.path)), fence)
            if mark is not None:
                # The old bytes, but never the old (lower) fence: the mark is re-stamped.
                old = stamp_change(old, mark)
            atomic_replace(self.path, old, keep=self.prev_path)
            self._log_change(mark)
        self._forget(change_id)
        return True

    async def raise_fence(self) -> None:
        await asyncio.to_thread(self.fence_only)

    def fence_only(self) -> None:
        """Raise the file's fence to the current token without changing a route (a new
        leader settling a run a deposed one left half done)."""
        fence = current_fence()
        if fence is None:
            return
        with self._locked():
            raw = self.path.read_bytes()
            mark = self._check_fence(parse_policy(raw, source=str(self.path)), fence)
            if mark is None:
                return
            atomic_replace(self.path, stamp_change(raw, mark), keep=self.prev_path)
            self._log_change(mark)

    def _check_fence(self, current: ServingPolicy, fence: Fence | None) -> ChangeMark | None:
        """Refuse a write whose token is lower than the file has seen; the mark to write."""
        if fence is None:
            return None
        self._repair_log(current)
        seen = current.change
        if seen is not None and seen.token > fence.token:
            raise StaleFence(str(self.path), fence.token, seen.token, seen.run)
        return ChangeMark(run=fence.run_id, token=fence.token, op=fence.op)  # type: ignore[arg-type]

    @property
    def changes_path(self) -> Path:
        return self.path.with_name(self.path.name + ".changes")

    def last_logged(self) -> dict[str, Any] | None:
        """The change log's last line (None: empty or missing)."""
        try:
            with self.changes_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        return json.loads(lines[-1]) if lines else None

    def _repair_log(self, current: ServingPolicy) -> None:
        """A process killed between the file's replace and its log line left the file's
        mark unlogged: log it now (under the lock), so the log lists every change."""
        mark = current.change
        last = self.last_logged()
        if mark is not None and (last is None or (last["run"], last["token"], last["op"]) != (
                mark.run, mark.token, mark.op)):
            self._log_change(mark)

    def _log_change(self, mark: ChangeMark | None) -> None:
        if mark is None:
            return
        line = json.dumps({"at": self._clock().isoformat(), **mark.model_dump()}) + "\n"
        fd = os.open(self.changes_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _forget(self, change_id: str) -> None:
        for which in ("before", "after"):
            with contextlib.suppress(FileNotFoundError):
                self._version(change_id, which).unlink()

    # -- implementation (runs in a worker thread) -------------------------------------

    def _read(self) -> ServingPolicy:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if self.create_missing:
                return ServingPolicy()
            raise DriverError(
                f"serving policy file {self.path} does not exist",
                hint="create it (an empty policy is `version: 1` and `routes: {}`), "
                "or point the policy-file driver at the right path",
            ) from None
        except PermissionError:
            raise DriverError(
                f"serving policy file {self.path} is not readable (permission denied)",
                hint="give the bot's user read and write access to the file and its directory",
            ) from None
        except IsADirectoryError:
            raise DriverError(
                f"serving policy path {self.path} is a directory, not a file",
                hint="point the policy-file driver at a YAML file",
            ) from None
        except OSError as exc:
            raise DriverError(
                f"serving policy file {self.path} could not be read: {exc.strerror or exc}",
                hint="check the disk and the path",
            ) from None
        return parse_policy(raw, source=str(self.path))

    def _write(self, updates: dict[str, dict[str, Any]], reason: str, action: str,
               change_id: str | None = None) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            raise DriverError(
                f"directory {directory} for the serving policy file does not exist",
                hint="create it or fix the policy-file path",
            )
        fence = current_fence()
        with self._locked():
            current = self._read()
            mark = self._check_fence(current, fence)
            try:
                new = current.with_values(updates, create=self.add_routes)
            except UnknownRoute as exc:
                raise DriverError(
                    f"action '{action}' names a route {self.path} does not list: {exc}",
                    hint="nothing was written; a mitigation only changes routes that exist",
                ) from None
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise DriverError(
                    f"action '{action}' would make {self.path} invalid: {where}: {err['msg']}",
                    hint="nothing was written; fix the action parameters",
                ) from None
            # Absolute values: if nothing changes, leave the file (and its
            # updated_at) untouched, so repeating a write is a true no-op.
            if (new.routes, new.customers) == (current.routes, current.customers) \
                    and self.path.exists():
                return
            new = new.model_copy(
                update={"updated_at": self._clock(), "updated_by": reason.strip() or self.actor,
                        "change": mark or current.change}
            )
            data = dump_policy(new)
            if change_id is not None and self.path.exists():
                # Both versions are on disk before the file changes: a crash after
                # this leaves versions nobody uses, never a change without them.
                self.versions_dir.mkdir(exist_ok=True)
                atomic_replace(self._version(change_id, "before"), self.path.read_bytes())
                atomic_replace(self._version(change_id, "after"), data)
            self._replace(data)
            self._log_change(mark)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DriverError(
                f"cannot open lock file {self.lock_path}: {exc.strerror or exc}",
                hint="the bot needs write access to the policy file's directory",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            # Closing the descriptor releases the flock.
            os.close(fd)

    def _replace(self, data: bytes) -> None:
        atomic_replace(self.path, data, keep=self.prev_path)


def yaml_problem(exc: yaml.YAMLError, source: str) -> tuple[str, str]:
    """``(file:line, what is wrong)`` for a YAML error, for messages that name the place."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    return where, getattr(exc, "problem", None) or str(exc)


def dump_policy(policy: ServingPolicy) -> bytes:
    """The policy as YAML, routes in their order, fields in the documented order."""
    data = policy.model_dump(mode="json")
    if data.get("change") is None:
        data.pop("change", None)  # a file the bot never fenced keeps its old shape
    if not data.get("customers"):
        data.pop("customers", None)  # likewise a file with no per-caller limits
    for route in data.get("routes", {}).values():
        if route.get("canary") is None:
            route.pop("canary", None)  # likewise a route with no release in progress
        else:  # and a canary says only what it changes (a prompt version, or a model)
            route["canary"] = {k: v for k, v in route["canary"].items() if v is not None}
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return text.encode()


def stamp_change(raw: bytes, mark: ChangeMark) -> bytes:
    """``raw`` with its top-level ``change`` mark replaced by ``mark``; every other byte
    (comments, layout) kept. The mark is the bot's own key, written on one line."""
    kept: list[bytes] = []
    skipping = False
    for line in raw.splitlines(keepends=True):
        if line.startswith(b"change:"):
            skipping = True
            continue
        if skipping and line[:1] in (b" ", b"\t"):
            continue  # the old mark's own lines
        skipping = False
        kept.append(line)
    body = b"".join(kept)
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return body + (f"change: {{run: {mark.run}, token: {mark.token}, op: {mark.op}}}\n"
                   ).encode()


def parse_policy(raw: bytes, *, source: str) -> ServingPolicy:
    """Parse and validate a policy document; errors name the file, line and field."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DriverError(
            f"{source}: not UTF-8 text (byte {exc.start})",
            hint="restore the file from its .prev copy",
        ) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a safe loader (C or Python)
    except yaml.YAMLError as exc:
        where, problem = yaml_problem(exc, source)
        raise DriverError(
            f"{where}: corrupt YAML: {problem}",
            hint="fix the file or restore it from its .prev copy",
        ) from None
    if data is None:
        raise DriverError(
            f"{source}: the serving policy file is empty",
            hint="an empty policy is `version: 1` and `routes: {}`; restore the .prev copy "
            "if the file was truncated",
        )
    if not isinstance(data, dict):
        raise DriverError(
            f"{source}: a serving policy must be a mapping, got {type(data).__name__}",
            hint="see the 'Serving policy file' format in the design notes",
        )
    try:
        return ServingPolicy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        line = _line_of(text, loc)
        where = f"{source}:{line}" if line else source
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise DriverError(
            f"{where}: {'.'.join(loc) or '<document>'}: {err['msg']}{more}",
            hint="fix the field or restore the file from its .prev copy",
        ) from None


def _line_of(text: str, loc: list[str]) -> int | None:
    """1-based line of the deepest key of ``loc`` found in the YAML text."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line: int | None = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                line = key.start_mark.line + 1
                node = value
                break
        else:
            break
    return line
