"""`serve` over real HTTP, fed by a real Alertmanager; and its graceful shutdown.

Alertmanager delivers to the bot with the bearer token in ``http_config``; the
alerts are posted to Alertmanager's own API, as Prometheus would. The store fails
the first delivery (503), Alertmanager retries, repeats every couple of seconds,
then sends the resolution: in the end one alert row and one incident, resolved.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import RecordingNotifier

from bot.adapters.service import Service
from bot.adapters.settings import Settings
from bot.base.errors import StoreError

pytestmark = pytest.mark.integration

TOKEN = "integration-token"


class Running:
    """A ``Service`` serving from its own event loop in a thread, on a free port."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="llm-incident-serve", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.service.run())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def start(self, wait_until: Callable[..., Any]) -> str:
        self.thread.start()
        wait_until(lambda: self.service.url or self.error, what="the service to listen")
        assert self.error is None, self.error
        return self.service.url  # type: ignore[return-value]

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the service did not stop"


@pytest.fixture
def running(tmp_path: Path, wait_until: Callable[..., Any]) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(**settings: Any) -> Running:
        cfg = Settings(db_path=tmp_path / "bot.db", policy_path=tmp_path / "policy.yaml",
                       **settings)
        run = Running(Service(cfg, "127.0.0.1", 0, notifier=RecordingNotifier()))
        run.start(wait_until)
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            if run.thread.is_alive():
                run.stop()


def received(run: Running, status: str) -> float:
    text = run.service.metrics.render().decode()
    m = re.search(
        rf'^llm_incident_alerts_received_total\{{source="alertmanager",status="{status}"\}} (\S+)$',
        text, re.M)
    return float(m.group(1)) if m else 0.0


def rows(run: Running, sql: str) -> list[tuple[Any, ...]]:
    # A second connection: the service's own belongs to its thread's loop.
    conn = sqlite3.connect(run.service.settings.db_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def post_to_alertmanager(am_url: str, alerts: list[dict[str, Any]]) -> None:
    res = httpx.post(f"{am_url}/api/v2/alerts", json=alerts, timeout=10)
    assert res.status_code == 200, res.text


def test_alertmanager_delivers_retries_repeats_and_resolves(
    running: Callable[..., Running], alertmanager: Callable[..., Any],
    wait_until: Callable[..., Any],
) -> None:
    bot = running(webhook_token=TOKEN)
    store = bot.service.engine.store
    failures: list[str] = []
    real_record = store.record_alert

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append("503")
            raise StoreError("database is locked (injected)")
        return real_record(*args, **kwargs)

    store.record_alert = fail_once  # type: ignore[method-assign]
    am = alertmanager(f"{bot.service.url}/v1/alerts/alertmanager", bearer_token=TOKEN,
                      group_wait="1s", group_interval="1s", repeat_interval="2s")

    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    alert = {
        "labels": {"alertname": "LLMCostBurnRateHigh", "route": "chat", "severity": "critical",
                   "incident_class": "runaway_cost"},
        "annotations": {"summary": "Spend on chat is 6x budget"},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
    }
    post_to_alertmanager(am.url, [alert])

    # The first delivery got a 503; Alertmanager's retry stored it.
    wait_until(lambda: received(bot, "firing") >= 1, what="the retried delivery", timeout=30)
    assert failures == ["503"]
    assert rows(bot, "SELECT COUNT(*) FROM alerts") == [(1,)]
    # Repeats every repeat_interval: more deliveries, still one alert and one incident.
    wait_until(lambda: received(bot, "firing") >= 3, what="two repeat deliveries", timeout=30)
    assert rows(bot, "SELECT COUNT(*) FROM alerts") == [(1,)]
    assert rows(bot, "SELECT COUNT(*) FROM incidents") == [(1,)]
    notifier = bot.service.engine.notifier
    assert isinstance(notifier, RecordingNotifier)
    assert len(notifier.of_kind("suggestion")) == 1, "repeats publish nothing"

    # Resolution: the same alert with an end in the past.
    ended = datetime.now(UTC) - timedelta(seconds=1)
    post_to_alertmanager(am.url, [{**alert, "endsAt": ended.isoformat().replace("+00:00", "Z")}])
    wait_until(lambda: rows(bot, "SELECT status FROM alerts") == [("resolved",)],
               what="the resolved notification", timeout=30)
    (incident,) = rows(bot, "SELECT id FROM incidents")
    kinds = [k for (k,) in rows(bot, f"SELECT kind FROM events WHERE incident_id = '{incident[0]}'")]
    assert kinds.count("alert_resolved") == 1 and kinds.count("opened") == 1
    assert rows(bot, "SELECT COUNT(*) FROM incidents") == [(1,)]
    bot.stop()
    am.stop()


def test_oversized_body_is_refused_over_real_http_before_it_is_read(
    running: Callable[..., Running],
) -> None:
    bot = running(max_body_bytes=4096)
    url = f"{bot.service.url}/v1/alerts"
    with httpx.Client(timeout=30) as client:
        res = client.post(url, content=b" " * 200_000, headers={"content-type": "application/json"})
        assert res.status_code == 413 and res.json()["field"] == "body"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            for _ in range(100):
                yield b" " * 8192

        res = client.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert res.status_code == 413
        ok = client.post(url, json={"labels": {"alertname": "X"},
                                    "starts_at": "2026-11-29T10:00:00Z"})
        assert ok.status_code == 200, ok.text
    assert rows(bot, "SELECT COUNT(*) FROM alerts") == [(1,)]


def test_stop_finishes_the_request_in_flight_then_closes_the_store(
    running: Callable[..., Running], wait_until: Callable[..., Any],
) -> None:
    bot = running()
    engine = bot.service.engine
    entered = threading.Event()
    real_accept = engine.accept_alerts

    async def slow_accept(alerts: Any, **kwargs: Any) -> Any:
        entered.set()
        await asyncio.sleep(0.5)  # the stop arrives while this request is in flight
        return await real_accept(alerts, **kwargs)

    engine.accept_alerts = slow_accept  # type: ignore[method-assign]
    body = (Path(__file__).parents[1] / "fixtures/alerts/alertmanager_firing.json").read_bytes()
    result: dict[str, Any] = {}

    def client() -> None:
        result["response"] = httpx.post(f"{bot.service.url}/v1/alerts/alertmanager", content=body,
                                        headers={"content-type": "application/json"}, timeout=30)

    sender = threading.Thread(target=client)
    sender.start()
    assert entered.wait(timeout=20), "the request reached the handler"
    bot.stop()
    sender.join(timeout=30)
    assert result["response"].status_code == 200
    assert rows(bot, "SELECT COUNT(*) FROM alerts") == [(1,)]
    with pytest.raises(Exception, match="closed"):
        engine.store.db.execute("SELECT 1")


def test_llm_incident_serve_stops_cleanly_on_sigterm(
    tmp_path: Path, wait_until: Callable[..., Any], closed_port_url: str,
) -> None:
    port = int(closed_port_url.rsplit(":", 1)[1])
    env = {**os.environ, "LLM_INCIDENT_DB": str(tmp_path / "bot.db"),
           "LLM_INCIDENT_POLICY": str(tmp_path / "policy.yaml")}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bot.adapters.cli", "serve", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, what="llm-incident serve to be ready", timeout=60)
        body = (Path(__file__).parents[1] / "fixtures/alerts/generic_single.json").read_bytes()
        res = httpx.post(f"http://127.0.0.1:{port}/v1/alerts", content=body,
                         headers={"content-type": "application/json"})
        assert res.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log.read_text()
    assert f"ready on http://127.0.0.1:{port}" in text and "llm-incident stopped" in text
    assert "Traceback" not in text


def test_serve_schedules_the_monthly_drill(running: Callable[..., Running]) -> None:
    from drills.schedule import JOB_ID

    run = running(drill_cron="0 10 * * 2", drill_tz="Europe/Berlin")
    job = run.service.scheduler._aps.get_job(JOB_ID)
    assert job is not None, "serve must attach the drill schedule"
    assert job.next_run_time.weekday() == 1 and job.next_run_time.hour == 10
    assert str(job.next_run_time.tzinfo) == "Europe/Berlin"
