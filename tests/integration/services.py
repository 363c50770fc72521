"""Real services on loopback for the integration and e2e tiers: Prometheus and
Alertmanager as plain background processes bound to 127.0.0.1, a scrape target, a
webhook recorder. Test modules import these as integration.services; the
fixtures around them live in conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import MetricsHandler

PROMETHEUS_BIN = "/usr/bin/prometheus"


ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"


READY_TIMEOUT = 60.0  # seconds; generous for a loaded CI machine


def require_binary(path: str) -> str:
    """The binary's path, or skip (locally) / fail (CI) with a clear message."""
    found = path if os.access(path, os.X_OK) else shutil.which(Path(path).name)
    if found:
        return found
    # The Debian package is named like the binary (prometheus, prometheus-alertmanager).
    message = (
        f"{path} is not installed; install the Debian package {Path(path).name} "
        "(tests/run.sh does) to run the integration tests"
    )
    if os.environ.get("LLM_INCIDENT_REQUIRE_INTEGRATION") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(
    check: Callable[[], Any], *, what: str, timeout: float = 20.0, interval: float = 0.1
) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"gave up waiting {timeout:g}s for {what} (last result: {last!r})", pytrace=False)


@dataclass
class Service:
    """A running background process with an HTTP API on loopback."""

    name: str
    url: str
    process: subprocess.Popen
    log: Path
    workdir: Path
    ready_path: str = "/-/ready"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(
                    f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                    f"{self.log_tail()}",
                    pytrace=False,
                )
            try:
                return httpx.get(f"{self.url}{self.ready_path}", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False

        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"{self.name} at {self.url} not ready after {READY_TIMEOUT:g}s:\n{self.log_tail()}",
            pytrace=False,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def spawn(name: str, argv: list[str], workdir: Path, url: str, *,
          ready_path: str = "/-/ready", cwd: Path | None = None,
          env: dict[str, str] | None = None) -> Service:
    """Start ``argv`` logging to ``workdir/<name>.log``; return once ``ready_path`` answers 200."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd or workdir, env=env,
        )
    service = Service(name=name, url=url, process=process, log=log, workdir=workdir,
                      ready_path=ready_path)
    service.wait_ready()
    return service


@dataclass
class ScrapeTarget:
    """A ``prometheus_client`` registry served on loopback, with one settable gauge.

    ``value{route=...}`` is exported as ``llm_incident_test_value``.
    """

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        self.gauge = Gauge(
            "llm_incident_test_value",
            "A value integration tests set and read back through Prometheus.",
            ["route"],
            registry=self.registry,
        )

    def set(self, value: float, *, route: str = "chat") -> None:
        self.gauge.labels(route=route).set(value)

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> ScrapeTarget:
        handler = MetricsHandler.factory(self.registry)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class PrometheusServer(Service):
    target: ScrapeTarget | None = None


@contextlib.contextmanager
def start_prometheus(
    workdir: Path,
    *,
    targets: Sequence[str] = (),
    rule_files: Sequence[Path] = (),
    alertmanager_url: str | None = None,
    interval: str = "1s",
    scrape_options: dict[str, Any] | None = None,
) -> Iterator[PrometheusServer]:
    """Run Prometheus scraping ``targets`` (host:port) every ``interval``.

    ``scrape_options`` are extra keys of the scrape job (``metrics_path``,
    ``authorization``, ``metric_relabel_configs``...)."""
    binary = require_binary(PROMETHEUS_BIN)
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "test", "static_configs": [{"targets": list(targets)}],
                            **(scrape_options or {})}],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    if alertmanager_url:
        host = alertmanager_url.split("://", 1)[-1].rstrip("/")
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url={url}/",
        "--log.level=warn",
    ]
    service = spawn("prometheus", argv, workdir, url)
    server = PrometheusServer(**vars(service))
    try:
        yield server
    finally:
        server.stop()


def start_alertmanager(
    workdir: Path,
    webhook_url: str,
    *,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
    bearer_token: str | None = None,
) -> Service:
    """Run Alertmanager sending every alert to ``webhook_url``, grouped fast for tests.

    ``bearer_token`` goes into the receiver's ``http_config.authorization``, as a
    deployment would configure it for the bot's webhook token."""
    binary = require_binary(ALERTMANAGER_BIN)
    workdir.mkdir(parents=True, exist_ok=True)
    receiver: dict[str, Any] = {"url": webhook_url, "send_resolved": True}
    if bearer_token is not None:
        receiver["http_config"] = {
            "authorization": {"type": "Bearer", "credentials": bearer_token}
        }
    config = {
        "route": {
            "receiver": "webhook",
            "group_by": ["alertname"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [{"name": "webhook", "webhook_configs": [receiver]}],
    }
    config_file = workdir / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url={url}/",
        "--cluster.listen-address=",  # no gossip: a single local instance
        "--log.level=warn",
    ]
    return spawn("alertmanager", argv, workdir, url)


class LoopbackHTTPServer:
    """A ``BaseHTTPRequestHandler`` class served on 127.0.0.1 from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], path: str) -> None:
        self.path = path
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


class WebhookRecorder(LoopbackHTTPServer):
    """A loopback HTTP endpoint that records JSON POSTs (an Alertmanager receiver)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[dict[str, Any]] = []
        recorder = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with contextlib.suppress(ValueError):
                    recorder.received.append(json.loads(body))
                self.send_response(recorder.status)
                self.end_headers()

        super().__init__(Handler, "/alerts")
