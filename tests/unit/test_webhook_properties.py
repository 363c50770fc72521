"""Property: whatever bytes reach a webhook, the answer is 2xx or 4xx, never 5xx.

A 5xx is retried by Alertmanager forever, so a body no sender could mean must be a
4xx naming what is wrong. Hypothesis feeds arbitrary bytes, arbitrary JSON, and
Alertmanager/Grafana/generic bodies with hostile labels, to all three endpoints of
one app; afterwards the app still answers /healthz and every stored alert is whole.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from fakes import RecordingNotifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.adapters.service_metrics import ServiceMetrics
from bot.adapters.settings import Settings
from bot.adapters.web import create_app
from bot.adapters.wiring import build_engine

PATHS = ("/v1/alerts/alertmanager", "/v1/alerts/grafana", "/v1/alerts")
_APP: dict[str, Any] = {}


def app(tmp: Path) -> Any:
    if "app" not in _APP:
        (tmp / "policy.yaml").write_text("version: 1\nroutes:\n  chat: {}\n  chat-small: {}\n")
        cfg = Settings(db_path=tmp / "bot.db", policy_path=tmp / "policy.yaml")
        engine = build_engine(cfg)
        engine.notifier = RecordingNotifier()
        _APP["engine"] = engine
        _APP["app"] = create_app(engine, cfg, metrics=ServiceMetrics(engine.store))
    return _APP["app"]


def post(tmp: Path, path: str, body: bytes, content_type: str = "application/json") -> int:
    async def go() -> int:
        transport = httpx.ASGITransport(app=app(tmp))
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as c:
            res = await c.post(path, content=body, headers={"content-type": content_type})
            return res.status_code

    return asyncio.run(go())


text = st.text(max_size=40)
hostile = st.one_of(text, st.sampled_from([
    "", "\x00", "\r\n", "{{ 7*7 }}", "<!channel>", "..", "a" * 5000, "\ud800", "1e999",
    "\u202e", "x" * 200,
]))
labels = st.dictionaries(st.one_of(text, st.sampled_from(["alertname", "route", "x" * 300])),
                         hostile, max_size=6)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=20,
)
timestamp = st.one_of(st.sampled_from(["2026-11-29T10:00:00Z", "0001-01-01T00:00:00Z", "",
                                       "9999-99-99T99:99:99Z", "yesterday"]), text, st.integers())


@st.composite
def alert_bodies(draw: st.DrawFn) -> bytes:
    alert = {"status": draw(st.sampled_from(["firing", "resolved", "weird", 3])),
             "labels": draw(st.one_of(labels, json_value)),
             "annotations": draw(st.one_of(labels, json_value)),
             "startsAt": draw(timestamp), "endsAt": draw(timestamp),
             "starts_at": draw(timestamp), "fingerprint": draw(st.one_of(text, json_value))}
    keep = draw(st.sets(st.sampled_from(sorted(alert)), min_size=1))
    alert = {k: v for k, v in alert.items() if k in keep}
    body: dict[str, Any] = {"alerts": draw(st.lists(st.just(alert) | json_value, max_size=3))}
    if draw(st.booleans()):
        body |= {"version": draw(st.sampled_from(["4", "1", 4, None])), "groupKey": "k",
                 "status": "firing", "receiver": "r"}
    if draw(st.booleans()):
        body["orgId"] = draw(st.one_of(st.integers(), text))
    return json.dumps(body).encode()


bodies = st.one_of(
    st.binary(max_size=300),
    json_value.map(lambda v: json.dumps(v).encode()),
    alert_bodies(),
    st.integers(min_value=10, max_value=2000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=5000).map(lambda n: b'{"a": ' + b"9" * n + b"}"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=bodies,
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8",
                                     "text/plain", "application/x-www-form-urlencoded"]))
def test_any_body_gets_2xx_or_4xx(tmp_path_factory: Any, path: str, body: bytes,
                                  content_type: str) -> None:
    tmp = _APP.setdefault("tmp", tmp_path_factory.mktemp("props"))
    status = post(tmp, path, body, content_type)
    assert 200 <= status < 500, (status, path, body[:200])


def test_the_app_is_still_up_and_every_stored_alert_is_whole(tmp_path_factory: Any) -> None:
    tmp = _APP.setdefault("tmp", tmp_path_factory.mktemp("props"))

    async def go() -> int:
        transport = httpx.ASGITransport(app=app(tmp))
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as c:
            return (await c.get("/healthz")).status_code

    assert asyncio.run(go()) == 200
    store = _APP["engine"].store
    for row in store.db.execute("SELECT labels, annotations, incident_id FROM alerts"):
        labels, annotations = json.loads(row[0]), json.loads(row[1])
        assert isinstance(labels, dict) and labels.get("alertname")
        assert isinstance(annotations, dict) and row[2]
