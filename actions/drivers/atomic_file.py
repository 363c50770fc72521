"""Atomic file replacement for the drivers that own files (policy file, LiteLLM config).

Write a temp file in the same directory, fsync it, keep the previous version
(a hard link where possible, else a copy), ``os.replace`` it into place, fsync
the directory. A reader sees the old file or the new one, never half of one; a
failure at any step leaves the old file in force and no temp file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from bot.base.errors import DriverError

STILL_IN_FORCE = "the previous file is still in force; check disk space and permissions"


def atomic_replace(path: Path, data: bytes, *, keep: Path | None = None) -> None:
    """Replace ``path`` with ``data``; ``keep`` receives the previous content first."""
    directory = path.parent
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    tmp = _write_temp(path, data, mode)
    try:
        if keep is not None:
            _keep_previous(path, keep)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DriverError(f"could not replace {path}: {exc.strerror or exc}",
                          hint=STILL_IN_FORCE) from None
    fsync_dir(directory)


def _write_temp(path: Path, data: bytes, mode: int) -> str:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DriverError(f"could not create a temp file next to {path}: {exc.strerror or exc}",
                          hint=STILL_IN_FORCE) from None
    try:
        # mkstemp makes 0600; a gateway may read as another user, so keep the mode.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DriverError(f"could not write the new version of {path}: {exc.strerror or exc}",
                          hint=STILL_IN_FORCE) from None
    os.close(fd)
    return tmp


def _keep_previous(path: Path, keep: Path) -> None:
    if not path.exists():
        return
    staging = keep.with_name(keep.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    try:
        # A hard link is free and atomic; the replace gives the live name a new
        # inode, so the link keeps the old content.
        os.link(path, staging)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
            raise
        staging.write_bytes(path.read_bytes())
    os.replace(staging, keep)


def fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some filesystems refuse to open directories.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
