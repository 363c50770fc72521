"""A real Redis server for the tests, from Debian's ``redis-server`` package.

Started on loopback in a temp directory, without persistence, as an unprivileged user
(the package's ``redis`` user when the tests run as root, as in CI); stopped and its
directory removed at the end. ``tests/run.sh`` installs the package.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = ("redis-server is not installed; install the Debian package "
                       "redis-server (tests/run.sh does) to run the shared-limit tests")
            if os.environ.get("LLM_INCIDENT_REQUIRE_INTEGRATION") == "1":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        self.dir = Path(tempfile.mkdtemp(prefix="llm-incident-redis-"))
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.log = self.dir / "redis.log"
        as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("redis")
                os.chmod(self.dir, 0o777)  # noqa: S103 - a throwaway test directory
                as_user = ["runuser", "-u", "redis", "--"]
            except KeyError:
                pass  # no package user: run as is (a root-owned throwaway server)
        self.proc = subprocess.Popen(
            [*as_user, binary, "--bind", self.host, "--port", str(self.port),
             "--dir", str(self.dir), "--save", "", "--appendonly", "no",
             "--logfile", str(self.log), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                pytest.fail(f"redis-server exited ({self.proc.returncode}): {err}{self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server not answering after {START_TIMEOUT:g}s: {self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
