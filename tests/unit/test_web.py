"""The webhook service over ASGI: payloads, refusals, auth, HMAC, health and metrics.

Every refusal is checked twice: the answer (status, ``field``, ``hint``) and the
store afterwards (no alert, incident or event row was written).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import RecordingNotifier

from bot.adapters.service_metrics import ServiceMetrics
from bot.adapters.settings import Settings
from bot.adapters.web import create_app
from bot.adapters.wiring import build_engine
from bot.base.errors import InputError, StoreError
from bot.playbook.registry import PlaybookRegistry
from bot.store import Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alerts"
AM, GRAFANA, GENERIC = "/v1/alerts/alertmanager", "/v1/alerts/grafana", "/v1/alerts"
JSON_TYPE = {"content-type": "application/json"}
NOW = 1_800_000_000.0  # the injected clock for Grafana's signed timestamps


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def raw(payload: Any) -> bytes:
    return json.dumps(payload).encode()


POLICY = "version: 1\nroutes:\n  chat: {}\n  chat-small: {}\n  chat-long: {}\n"


class Bot:
    """An app on an engine with an in-memory store, and a way to talk to it."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        (tmp_path / "policy.yaml").write_text(POLICY)
        self.settings = Settings(db_path=Path(":memory:"), policy_path=tmp_path / "policy.yaml",
                                 **settings)
        self.engine = build_engine(self.settings)
        self.notifier = RecordingNotifier()
        self.engine.notifier = self.notifier
        self.metrics = ServiceMetrics(self.engine.store)
        self.scheduler: Any = None
        self.app = create_app(self.engine, self.settings, metrics=self.metrics,
                              clock=lambda: NOW)

    def rebuild(self, scheduler: Any = None) -> None:
        self.app = create_app(self.engine, self.settings, metrics=self.metrics,
                              scheduler=scheduler, clock=lambda: NOW)

    def session(self, fn: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
        async def go() -> Any:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
                return await fn(client)

        return asyncio.run(go())

    def post(self, path: str, body: bytes | Any, headers: dict[str, str] | None = None,
             ) -> httpx.Response:
        content = body if isinstance(body, bytes) else raw(body)
        hdrs = JSON_TYPE if headers is None else headers
        return self.session(lambda c: c.post(path, content=content, headers=hdrs))

    def get(self, path: str) -> httpx.Response:
        return self.session(lambda c: c.get(path))

    def count(self, table: str) -> int:
        return self.engine.store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def assert_nothing_stored(self) -> None:
        assert (self.count("alerts"), self.count("incidents"), self.count("events")) == (0, 0, 0)

    def metric(self, line_start: str) -> float | None:
        for line in self.metrics.render().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture
def bot(tmp_path: Path) -> Bot:
    return Bot(tmp_path)


# --- accepted payloads ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name", "source"),
    [(AM, "alertmanager_firing.json", "alertmanager"), (GRAFANA, "grafana_firing.json", "grafana"),
     (GENERIC, "generic_single.json", "generic"), (GENERIC, "generic_batch.json", "generic")],
)
def test_each_source_is_committed_and_answered_per_alert(
    bot: Bot, path: str, name: str, source: str
) -> None:
    payload = fixture(name)
    res = bot.post(path, payload)
    assert res.status_code == 200, res.text
    answered = res.json()["alerts"]
    rows = bot.engine.store.db.execute("SELECT fingerprint, incident_id, source FROM alerts "
                                       "ORDER BY id").fetchall()
    assert [(a["fingerprint"], a["incident_id"]) for a in answered] == [r[:2] for r in rows]
    assert {r[2] for r in rows} == {source}
    assert answered[0]["outcome"] == "opened" and answered[0]["new_incident"] is True
    firing = sum(a["status"] == "firing" for a in answered)
    assert bot.metric(f'llm_incident_alerts_received_total{{source="{source}",status="firing"}}'
                      ) == firing
    assert bot.notifier.of_kind("suggestion"), "a new incident is proposed to the notifier"


def test_repeat_is_a_duplicate_and_resolved_updates_the_incident(bot: Bot) -> None:
    first = bot.post(AM, fixture("alertmanager_firing.json")).json()["alerts"][0]
    again = bot.post(AM, fixture("alertmanager_firing.json")).json()["alerts"][0]
    assert again["outcome"] == "duplicate" and again["incident_id"] == first["incident_id"]
    assert again["new_incident"] is False
    resolved = bot.post(AM, fixture("alertmanager_resolved.json")).json()["alerts"][0]
    assert resolved["outcome"] == "resolved" and resolved["incident_id"] == first["incident_id"]
    stored = bot.engine.store.alerts_for(first["incident_id"])
    assert [a.status for a in stored] == ["resolved"]
    assert bot.count("incidents") == 1


def test_a_thousand_identical_posts_make_one_alert_and_one_incident(bot: Bot) -> None:
    body = raw(fixture("alertmanager_firing.json"))

    async def storm(client: httpx.AsyncClient) -> list[int]:
        return [(await client.post(AM, content=body, headers=JSON_TYPE)).status_code
                for _ in range(1000)]

    assert set(bot.session(storm)) == {200}
    assert (bot.count("alerts"), bot.count("incidents")) == (1, 1)
    assert len(bot.notifier.of_kind("suggestion")) == 1


def test_label_markup_and_template_syntax_are_stored_verbatim(bot: Bot) -> None:
    hostile = {
        "alertname": "LLMCostBurnRateHigh", "route": "<!channel> *chat* {{ 7*7 }}",
        "model": "{% for x in range(3) %}{{ x }}{% endfor %}", "team": "<@U123>|`x`&amp;",
    }
    payload = {"labels": hostile, "annotations": {"summary": "{{ config }} <https://x|click>"},
               "starts_at": "2026-11-29T10:00:00Z"}
    res = bot.post(GENERIC, payload)
    assert res.status_code == 200, res.text
    (stored,) = bot.engine.store.alerts_for(res.json()["alerts"][0]["incident_id"])
    assert stored.labels == hostile
    assert stored.annotations == {"summary": "{{ config }} <https://x|click>"}
    incident = bot.engine.store.incident(res.json()["alerts"][0]["incident_id"])
    assert incident.title.endswith("on <!channel> *chat* {{ 7*7 }}")  # verbatim, not rendered
    (msg,) = bot.notifier.of_kind("suggestion")
    shown = repr(msg)  # the neutral message carries raw text; the Slack layer escapes
    assert "{{ 7*7 }}" in shown and "*chat* 49" not in shown


# --- refusals: 400 / 415 / 413, nothing stored ------------------------------------------


def _am(**changes: Any) -> dict[str, Any]:
    payload = fixture("alertmanager_firing.json")
    alert = payload["alerts"][0]
    for key, value in changes.items():
        if key.startswith("alert_"):
            alert[key.removeprefix("alert_")] = value
        else:
            payload[key] = value
    return payload


BAD = [
    (AM, raw(_am())[:-7], "body", "truncated JSON"),
    (AM, b"{'version': '4'}", "body", "single quotes"),
    (AM, b"", "body", "empty"),
    (AM, b"\xff\xfe{}", "body", "not UTF-8"),
    (AM, raw([1, 2]), "<body>", "top-level array"),
    (AM, raw(_am(version="5")), "version", "unknown version"),
    (AM, raw(_am(status="exploded")), "status", "unknown status"),
    (AM, raw(_am(alerts={"a": 1})), "alerts", "alerts not a list"),
    (AM, raw(_am(alert_status="pending")), "alerts[0].status", "unknown alert status"),
    (AM, raw(_am(alert_labels=["a"])), "alerts[0].labels", "labels not an object"),
    (AM, raw(_am(alert_labels={"alertname": "X", "route": 7})), "alerts[0].labels.route",
     "label value a number"),
    (AM, raw(_am(alert_startsAt="yesterday")), "alerts[0].startsAt", "bad timestamp"),
    (AM, raw(_am(alert_startsAt="2026-13-45T10:00:00Z")), "alerts[0].startsAt", "bad date"),
    (AM, raw(_am(alert_endsAt=12)), "alerts[0].endsAt", "timestamp of the wrong type"),
    (GRAFANA, raw({**fixture("grafana_firing.json"), "orgId": "one"}), "orgId", "orgId a string"),
    (GENERIC, raw({"labels": {"route": "chat"}}), "labels.alertname", "no alertname"),
    (GENERIC, raw({"labels": {"alertname": "X"}, "startsAt": "2026-11-29T10:00:00Z"}),
     "startsAt", "camelCase key in the generic shape"),
    (GENERIC, raw({"alerts": [{"labels": {"alertname": "X"}}, {"labels": "x"}]}),
     "alerts[1].labels", "second of two bad: all-or-nothing"),
]


@pytest.mark.parametrize(("path", "body", "field", "why"), BAD, ids=[b[3] for b in BAD])
def test_bad_payloads_get_400_with_the_field_and_store_nothing(
    bot: Bot, path: str, body: bytes, field: str, why: str
) -> None:
    res = bot.post(path, body)
    assert res.status_code == 400, (why, res.text)
    err = res.json()
    assert err["field"] == field and err["error"]
    assert set(err) == {"error", "field", "hint"}
    bot.assert_nothing_stored()
    assert bot.metric('llm_incident_webhook_rejected_total{reason="invalid",source="'
                      f'{ {AM: "alertmanager", GRAFANA: "grafana", GENERIC: "generic"}[path]}"}}'
                      ) == 1


@pytest.mark.parametrize(
    ("headers", "field"),
    [({"content-type": "text/plain"}, "Content-Type"),
     ({"content-type": "application/x-www-form-urlencoded"}, "Content-Type"),
     ({"content-type": "application/json", "content-encoding": "gzip"}, "Content-Encoding")],
)
def test_a_body_that_is_not_plain_json_gets_415(
    bot: Bot, headers: dict[str, str], field: str
) -> None:
    res = bot.post(AM, fixture("alertmanager_firing.json"), headers=headers)
    assert res.status_code == 415 and res.json()["field"] == field
    bot.assert_nothing_stored()


def test_json_with_parameters_or_a_json_suffix_is_accepted(bot: Bot) -> None:
    for ctype in ("application/json; charset=utf-8", "application/vnd.alerts+json"):
        res = bot.post(GENERIC, fixture("generic_single.json"), headers={"content-type": ctype})
        assert res.status_code == 200, (ctype, res.text)


def _padded(limit: int) -> bytes:
    body = raw(fixture("generic_single.json"))
    return body + b" " * (limit - len(body))  # trailing whitespace is still valid JSON


def test_body_limit_is_inclusive_and_one_byte_more_is_413(tmp_path: Path) -> None:
    bot = Bot(tmp_path, max_body_bytes=4096)
    over = bot.post(GENERIC, _padded(4097))
    assert over.status_code == 413 and over.json()["field"] == "body"
    bot.assert_nothing_stored()
    assert bot.post(GENERIC, _padded(4096)).status_code == 200


def test_limit_holds_while_streaming_a_body_without_content_length(tmp_path: Path) -> None:
    bot = Bot(tmp_path, max_body_bytes=64 * 1024)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(10_000):  # 160 MB if the server read it all
            sent += 16 * 1024
            yield b" " * (16 * 1024)

    res = bot.session(lambda c: c.post(GENERIC, content=endless(), headers=JSON_TYPE))
    assert res.status_code == 413
    assert sent <= 64 * 1024 + 2 * 16 * 1024, "the server stopped reading at the limit"
    bot.assert_nothing_stored()


# --- auth --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "www"),
    [(None, 'Bearer realm="llm-incident"'),
     ("Bearer wrong-token", 'Bearer realm="llm-incident", error="invalid_token"'),
     ("Basic s3cret-token", 'Bearer realm="llm-incident", error="invalid_token"'),
     ("Bearer s3cret-token-and-more", 'Bearer realm="llm-incident", error="invalid_token"')],
)
def test_webhooks_need_the_bearer_token(tmp_path: Path, authorization: str | None,
                                        www: str) -> None:
    bot = Bot(tmp_path, webhook_token="s3cret-token")
    headers = dict(JSON_TYPE) | ({"authorization": authorization} if authorization else {})
    for path, name in ((AM, "alertmanager_firing.json"), (GENERIC, "generic_single.json")):
        res = bot.post(path, fixture(name), headers=headers)
        assert res.status_code == 401 and res.headers["www-authenticate"] == www
        assert res.json()["field"] == "Authorization"
    bot.assert_nothing_stored()
    ok = bot.post(AM, fixture("alertmanager_firing.json"),
                  headers=JSON_TYPE | {"authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200
    assert bot.get("/healthz").status_code == 200  # probes need no token


def _signed(body: bytes, secret: str, stamp: str | None = None) -> str:
    message = body if stamp is None else stamp.encode() + b":" + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_grafana_hmac_good_bad_missing_and_tampered(tmp_path: Path) -> None:
    bot = Bot(tmp_path, grafana_hmac_secret="hmac-key")
    body = raw(fixture("grafana_firing.json"))
    good = _signed(body, "hmac-key")
    for headers, field in (
        ({}, "X-Grafana-Alerting-Signature"),
        ({"X-Grafana-Alerting-Signature": _signed(body, "other-key")},
         "X-Grafana-Alerting-Signature"),
        ({"X-Grafana-Alerting-Signature": "zz-not-hex"}, "X-Grafana-Alerting-Signature"),
    ):
        res = bot.post(GRAFANA, body, headers=JSON_TYPE | headers)
        assert res.status_code == 401 and res.json()["field"] == field, res.text
    tampered = body.replace(b"extract", b"chat!!!")
    res = bot.post(GRAFANA, tampered, headers=JSON_TYPE | {"X-Grafana-Alerting-Signature": good})
    assert res.status_code == 401
    bot.assert_nothing_stored()
    assert bot.metric('llm_incident_webhook_rejected_total{reason="bad_signature",'
                      'source="grafana"}') == 4
    res = bot.post(GRAFANA, body, headers=JSON_TYPE | {"X-Grafana-Alerting-Signature": good})
    assert res.status_code == 200
    # Grafana's signing code names the header X-Grafana-Alert-Signature when left empty.
    second = raw(fixture("grafana_resolved.json"))
    res = bot.post(GRAFANA, second, headers=JSON_TYPE | {
        "X-Grafana-Alert-Signature": _signed(second, "hmac-key").upper()})
    assert res.status_code == 200
    # The HMAC covers the Grafana endpoint only.
    assert bot.post(GENERIC, fixture("generic_single.json")).status_code == 200


def test_grafana_hmac_with_a_timestamp_header_refuses_stale_and_unstamped(tmp_path: Path) -> None:
    bot = Bot(tmp_path, grafana_hmac_secret="k", grafana_hmac_timestamp_header="X-Grafana-Ts")
    body = raw(fixture("grafana_firing.json"))
    fresh, stale = str(int(NOW) - 30), str(int(NOW) - 3600)
    sig = "X-Grafana-Alerting-Signature"
    refusals = [
        {sig: _signed(body, "k")},  # signed without the timestamp: no header sent
        {sig: _signed(body, "k"), "X-Grafana-Ts": fresh},  # body-only signature
        {sig: _signed(body, "k", stale), "X-Grafana-Ts": stale},  # replay of an old request
        {sig: _signed(body, "k", "abc"), "X-Grafana-Ts": "abc"},
    ]
    for headers in refusals:
        assert bot.post(GRAFANA, body, headers=JSON_TYPE | headers).status_code == 401, headers
    bot.assert_nothing_stored()
    ok = bot.post(GRAFANA, body, headers=JSON_TYPE | {sig: _signed(body, "k", fresh),
                                                      "X-Grafana-Ts": fresh})
    assert ok.status_code == 200, ok.text


# --- 503 / 500 ---------------------------------------------------------------------------


def test_store_failure_is_503_with_retry_after_and_nothing_half_written(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("disk I/O error", hint="check the disk")

    monkeypatch.setattr(bot.engine.store, "record_alert", broken)
    res = bot.post(AM, fixture("alertmanager_firing.json"))
    assert res.status_code == 503 and "retry" in res.json()["error"]
    assert int(res.headers["retry-after"]) > 0
    bot.assert_nothing_stored()
    monkeypatch.undo()
    assert bot.post(AM, fixture("alertmanager_firing.json")).status_code == 200  # the retry


def test_a_closed_store_is_503_not_500(bot: Bot) -> None:
    bot.engine.store.close()
    res = bot.post(AM, fixture("alertmanager_firing.json"))
    assert res.status_code == 503 and res.headers["retry-after"]
    assert bot.metric('llm_incident_webhook_rejected_total{reason="store_unavailable",'
                      'source="alertmanager"}') == 1


def test_unexpected_errors_are_500_without_a_traceback(
    bot: Bot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("secret internals at /srv/app.py")

    monkeypatch.setattr(bot.engine, "accept_alerts", boom)
    res = bot.post(AM, fixture("alertmanager_firing.json"))
    assert res.status_code == 500
    assert "secret internals" not in res.text and "Traceback" not in res.text
    assert "ZeroDivisionError" in caplog.text  # logged for the operator


# --- health, readiness, metrics, OpenAPI --------------------------------------------------


def test_readyz_names_what_is_not_ready(bot: Bot, tmp_path: Path) -> None:
    body = bot.get("/readyz").json()
    assert body["ready"] is True and body["playbooks"] == 8
    assert body["checks"]["store"] == {"ok": True, "detail": "reads and writes"}

    class Sched:
        running = False

    bot.rebuild(scheduler=Sched())
    res = bot.get("/readyz")
    assert res.status_code == 503 and "scheduler" in res.json()["reason"]
    Sched.running = True
    assert bot.get("/readyz").status_code == 200
    bot.engine.registry.reload(tmp_path / "no-playbooks-here")  # keeps the last good set
    res = bot.get("/readyz")
    assert res.status_code == 200
    assert res.json()["checks"]["playbooks"]["degraded"] is True
    assert "no-playbooks-here" in res.json()["checks"]["playbooks"]["detail"]
    bot.engine.registry = PlaybookRegistry()  # nothing loaded
    res = bot.get("/readyz")
    assert res.status_code == 503 and "playbooks" in res.json()["reason"]
    bot.engine.store.close()
    res = bot.get("/readyz")
    assert res.status_code == 503 and "store" in res.json()["reason"]
    assert bot.get("/healthz").status_code == 200


def test_readyz_is_not_ready_when_the_store_reads_but_takes_no_writes(tmp_path: Path) -> None:
    # A full disk or a read-only file: reads still answer, every webhook would get 503.
    db = tmp_path / "bot.db"
    bot = Bot(tmp_path)
    bot.settings = replace(bot.settings, db_path=db)
    bot.engine = build_engine(bot.settings)
    bot.metrics = ServiceMetrics(bot.engine.store)
    bot.rebuild()
    assert bot.get("/readyz").status_code == 200
    bot.engine.store.db.execute("PRAGMA query_only = ON")  # reads work, writes fail
    res = bot.get("/readyz")
    assert res.status_code == 503
    assert res.json()["checks"]["store"]["ok"] is False
    assert "does not take writes" in res.json()["reason"]
    assert bot.post(AM, fixture("alertmanager_firing.json")).status_code == 503


def test_state_metrics_come_from_the_store_and_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    bot = Bot(tmp_path)
    bot.settings = replace(bot.settings, db_path=db)
    bot.engine = build_engine(bot.settings)
    bot.metrics = ServiceMetrics(bot.engine.store)
    bot.rebuild()
    incident = bot.post(AM, fixture("alertmanager_firing.json")).json()["alerts"][0]["incident_id"]
    run = asyncio.run(bot.engine.plan_step(incident, actor="alice"))
    bot.engine.store.add_event(incident, "guard_refused", "refused", actor="bob", run_id=run.id,
                               data={"guard": "cooldown"})
    asyncio.run(bot.engine.runner.pause("alice", "drill"))
    bot.engine.store.close()

    metrics = ServiceMetrics(Store(db))  # a new process on the same file
    text = metrics.render().decode()
    assert 'llm_incident_incidents{class="runaway_cost",drill="false",state="open"} 1.0' in text
    assert (f'llm_incident_actions_total{{action="{run.action}",drill="false",'
            f'result="{run.state}"}} 1.0') in text
    assert 'llm_incident_guard_refusals_total{guard="cooldown"} 1.0' in text
    assert "llm_incident_paused 1.0" in text
    assert "llm_incident_store_up 1.0" in text


def test_metrics_endpoint_and_a_failing_store_scrape(bot: Bot) -> None:
    bot.post(AM, b"{", headers=JSON_TYPE)
    res = bot.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    assert ('llm_incident_webhook_rejected_total{reason="invalid",source="alertmanager"} 1.0'
            in res.text)
    assert 'llm_incident_webhook_duration_seconds_count{source="alertmanager"} 1.0' in res.text
    bot.engine.store.close()
    res = bot.get("/metrics")
    assert res.status_code == 200 and "llm_incident_store_up 0.0" in res.text


def test_openapi_documents_every_webhook_body(bot: Bot) -> None:
    spec = bot.get("/openapi.json").json()
    for path in (AM, GRAFANA, GENERIC):
        op = spec["paths"][path]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema.get("properties") or schema.get("oneOf")
        assert {"400", "401", "413", "415", "503"} <= set(op["responses"])
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


# --- settings and the CLI's serve options -------------------------------------------------


def test_serve_settings_from_env() -> None:
    s = Settings.from_env({"LLM_INCIDENT_PORT": "9000", "LLM_INCIDENT_HOST": "0.0.0.0",
                           "LLM_INCIDENT_WEBHOOK_TOKEN": "t", "LLM_INCIDENT_MAX_BODY": "2048",
                           "LLM_INCIDENT_GRAFANA_HMAC_SECRET": "k"})
    assert (s.port, s.host, s.webhook_token, s.max_body_bytes, s.grafana_hmac_secret) == (
        9000, "0.0.0.0", "t", 2048, "k")
    assert "webhook_token" not in repr(s) and "grafana_hmac_secret" not in repr(s)
    for name, value in (("LLM_INCIDENT_PORT", "http"), ("LLM_INCIDENT_PORT", "70000"),
                        ("LLM_INCIDENT_MAX_BODY", "0"), ("LLM_INCIDENT_MAX_BODY", "1MB")):
        with pytest.raises(InputError, match=name):
            Settings.from_env({name: value})


def test_serve_arguments() -> None:
    from bot.adapters.cli import parse_serve_args
    from bot.base.errors import IncidentBotError

    assert parse_serve_args(["--host", "0.0.0.0", "--port=9001"]) == {"host": "0.0.0.0",
                                                                       "port": 9001}
    for bad in (["--port", "x"], ["--port"], ["--verbose"], ["--port", "99999"]):
        with pytest.raises(IncidentBotError, match="serve"):
            parse_serve_args(bad)


def test_metric_labels_stay_bounded_and_drills_stay_apart(bot: Bot) -> None:
    import random

    rng = random.Random(7)
    for i in range(1000):  # unmatched alerts, each with its own incident_class label
        labels = {"alertname": f"Custom{i}", "incident_class": f"made-up-{rng.random()}",
                  "route": f"r{i}"}
        assert bot.post(GENERIC, {"labels": labels}).status_code == 200
    text = bot.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("llm_incident_incidents{")]
    assert series == ['llm_incident_incidents{class="other",drill="false",state="open"} 1000.0']
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by tests/run.sh"
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_plan_time_refusals_are_counted(bot: Bot) -> None:
    incident = bot.post(AM, fixture("alertmanager_firing.json")).json()["alerts"][0]["incident_id"]
    run = asyncio.run(bot.engine.plan_step(incident, actor="alice"))
    asyncio.run(bot.engine.runner.approve(run.id, "alice"))
    asyncio.run(bot.engine.runner.apply(run.id, actor="alice"))
    asyncio.run(bot.engine.runner.revert(run.id, actor="alice", reason="test"))
    again = asyncio.run(bot.engine.plan_step(incident, actor="alice"))  # within the cooldown
    assert again.state == "refused"
    assert bot.metric('llm_incident_guard_refusals_total{guard="cooldown"}') == 1.0

