"""A real Postgres server for the tests, from Debian's ``postgresql`` package.

Started once per test session on loopback, in a temp directory, by ``initdb`` and
``pg_ctl`` as an unprivileged user (Postgres refuses to run as root, and CI runs
the tests as root: the package's own ``postgres`` user runs it then). Each test
gets a fresh database of its own; the server is stopped and its directory removed
at the end. ``tests/run.sh`` installs the package.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

_DEBIAN_BINS = "/usr/lib/postgresql/*/bin"


def postgres_bin(name: str) -> str:
    """The newest installed major version's ``name`` binary, else fail (CI) or skip."""
    found = sorted(glob.glob(f"{_DEBIAN_BINS}/{name}"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return found[-1]
    message = (f"Postgres's {name} is not installed; install the Debian package postgresql "
               "(tests/run.sh does) to run the Postgres store tests")
    if os.environ.get("LLM_INCIDENT_REQUIRE_INTEGRATION") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throwaway cluster; ``new_database()`` hands out empty databases."""

    def __init__(self, *, durable: bool = False, listen: str = "127.0.0.1") -> None:
        initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        self.dir = Path(tempfile.mkdtemp(prefix="llm-incident-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses root: the package's system user runs the server.
            os.chmod(self.dir, 0o777)  # noqa: S103 - a throwaway test directory
            self._as = ["runuser", "-u", "postgres", "--"]
        self._pg_ctl = pg_ctl
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "llm", "-E", "UTF8",
                   "--no-sync"])
        # fsync off for tests: a cluster thrown away after the session. Benchmarks ask
        # for a durable one (every commit on disk, as SQLite's synchronous=FULL).
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses={listen} "
                   "-c max_connections=300")
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._options = options
        self._start()
        self._names = itertools.count(1)
        self.admin_url = f"postgresql://llm@127.0.0.1:{self.port}/postgres"

    def _start(self) -> None:
        self._run([self._pg_ctl, "-D", str(self.data), "-o", self._options, "-l",
                   str(self.dir / "log"), "-w", "-t", "60", "start"])

    def restart(self, *, down_for: float = 0.0) -> None:
        """Crash the server (``immediate``: no clean shutdown, every session cut, as a
        host failure does), keep it down ``down_for`` seconds, start it again."""
        self._run([self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        time.sleep(down_for)
        self._start()

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}")

    def new_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://llm@127.0.0.1:{self.port}/{name}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.dir / "log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        try:
            self._run([self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        except RuntimeError:
            time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)
