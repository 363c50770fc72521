"""Alert intake: the three webhook shapes, auto-detection, and every refusal path."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from bot.base.errors import AlertParseError
from bot.intake.parse import (
    MAX_LABELS,
    MAX_VALUE_CHARS,
    detect_source,
    label_fingerprint,
    parse_alertmanager,
    parse_body,
    parse_generic,
    parse_grafana,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alerts"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def refused(payload_or_body: Any, *, source: str | None = None) -> AlertParseError:
    raw = payload_or_body if isinstance(payload_or_body, bytes) else body(payload_or_body)
    with pytest.raises(AlertParseError) as info:
        parse_body(raw, source=source)
    return info.value


# --- Alertmanager ------------------------------------------------------------------------


def test_alertmanager_firing_fixture() -> None:
    payload = load("alertmanager_firing.json")
    [alert] = parse_alertmanager(payload)
    assert alert.source == "alertmanager"
    assert alert.status == "firing"
    assert alert.alertname == "LLMCostBurnRateHigh"
    assert alert.labels["route"] == "chat"
    assert alert.annotations["hourly_budget_usd"] == "20"
    assert alert.fingerprint == payload["alerts"][0]["fingerprint"]
    # Go's nanoseconds are cut to microseconds; the zero endsAt means "no end".
    assert alert.starts_at == datetime(2026, 11, 29, 9, 52, 26, 739266, tzinfo=UTC)
    assert alert.ends_at is None
    assert alert.generator_url and alert.generator_url.startswith("http://prometheus.internal")
    assert alert.raw == payload["alerts"][0]  # the alert's own dict, not the batch


def test_alertmanager_resolved_fixture_keeps_dedup_key_of_the_firing() -> None:
    [firing] = parse_alertmanager(load("alertmanager_firing.json"))
    [resolved] = parse_alertmanager(load("alertmanager_resolved.json"))
    assert resolved.status == "resolved"
    assert resolved.ends_at == datetime(2026, 11, 29, 10, 41, 56, 739266, tzinfo=UTC)
    assert resolved.dedup_key == firing.dedup_key


def test_alertmanager_group_gives_one_alert_each_in_order() -> None:
    payload = load("alertmanager_group.json")
    alerts = parse_alertmanager(payload)
    assert [a.labels["route"] for a in alerts] == ["chat", "chat-small", "summarize"]
    assert [a.status for a in alerts] == ["firing", "firing", "resolved"]
    assert len({a.fingerprint for a in alerts}) == 3
    assert [a.raw for a in alerts] == payload["alerts"]


def test_fingerprint_is_alertmanagers() -> None:
    # Values read back from a real Alertmanager 0.25 (GET /api/v2/alerts).
    assert (
        label_fingerprint(
            {
                "alertname": "ProbeFailure",
                "instance": "https://server.example.org",
                "job": "http_checks",
                "monitor": "master",
                "severity": "critical",
            }
        )
        == "fe986f5dcb3e6510"
    )
    assert (
        label_fingerprint(
            {
                "alertname": "LLMCostBurnRateHigh",
                "route": "chat",
                "incident_class": "runaway_cost",
                "severity": "critical",
            }
        )
        == "173a6c9e60ac6098"
    )


def test_alertmanager_without_fingerprint_computes_it() -> None:
    payload = load("alertmanager_firing.json")
    del payload["alerts"][0]["fingerprint"]
    [alert] = parse_alertmanager(payload)
    assert alert.fingerprint == label_fingerprint(payload["alerts"][0]["labels"])


def test_alertmanager_unknown_version_is_refused() -> None:
    payload = load("alertmanager_firing.json")
    payload["version"] = "5"
    err = refused(payload)
    assert err.field == "version"
    assert "'5'" in err.message and err.hint


def test_alertmanager_missing_version_is_refused() -> None:
    payload = load("alertmanager_firing.json")
    del payload["version"]
    with pytest.raises(AlertParseError) as info:
        parse_alertmanager(payload)
    assert info.value.field == "version"


def test_empty_alert_list_is_no_alerts() -> None:
    payload = load("alertmanager_firing.json")
    payload["alerts"] = []
    assert parse_alertmanager(payload) == []


# --- Grafana -----------------------------------------------------------------------------


def test_grafana_firing_fixture() -> None:
    payload = load("grafana_firing.json")
    [alert] = parse_grafana(payload)
    assert alert.source == "grafana"
    assert alert.status == "firing"
    assert alert.alertname == "LLMMalformedOutputRatioHigh"
    assert alert.starts_at == datetime(2026, 11, 29, 9, 2, tzinfo=UTC)  # +01:00 -> UTC
    assert alert.ends_at is None
    assert alert.fingerprint == "a3c95b7f1e2d4f60"
    assert alert.raw["values"] == {"B": 0.12, "C": 1}  # Grafana-only fields stay in raw
    assert "dashboardURL" in alert.raw


def test_grafana_resolved_and_group_fixtures() -> None:
    [resolved] = parse_grafana(load("grafana_resolved.json"))
    assert resolved.status == "resolved"
    assert resolved.ends_at == datetime(2026, 11, 29, 9, 31, tzinfo=UTC)
    group = parse_grafana(load("grafana_group.json"))
    assert [a.labels["route"] for a in group] == ["chat", "rag-answer"]
    assert all(a.source == "grafana" for a in group)


def test_grafana_unknown_version_and_bad_org_id() -> None:
    payload = load("grafana_firing.json")
    payload["version"] = "2"
    assert refused(payload).field == "version"
    payload = load("grafana_firing.json")
    payload["orgId"] = "one"
    assert refused(payload).field == "orgId"


# --- auto-detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("alertmanager_firing.json", "alertmanager"),
        ("alertmanager_group.json", "alertmanager"),
        ("grafana_firing.json", "grafana"),
        ("grafana_group.json", "grafana"),
        ("generic_single.json", "generic"),
        ("generic_batch.json", "generic"),
    ],
)
def test_auto_detects_the_source(name: str, source: str) -> None:
    payload = load(name)
    assert detect_source(payload) == source
    alerts = parse_body((FIXTURES / name).read_bytes())
    assert alerts and {a.source for a in alerts} == {source}


def test_grafana_detected_by_alert_keys_without_org_id() -> None:
    payload = load("grafana_firing.json")
    for key in ("orgId", "title", "state", "message"):
        del payload[key]
    assert detect_source(payload) == "grafana"


def test_explicit_source_overrides_detection() -> None:
    # A Grafana body parsed as Alertmanager is checked against Alertmanager's version.
    err = refused((FIXTURES / "grafana_firing.json").read_bytes(), source="alertmanager")
    assert err.field == "version" and "'1'" in err.message


def test_unknown_source_is_refused() -> None:
    raw = (FIXTURES / "generic_single.json").read_bytes()
    err = refused(raw, source="pagerduty")
    assert err.field == "source" and "generic" in (err.hint or "")


def test_generic_body_forced_as_alertmanager_names_the_missing_field() -> None:
    err = refused((FIXTURES / "generic_batch.json").read_bytes(), source="alertmanager")
    assert err.field == "version"


# --- generic -----------------------------------------------------------------------------


def test_generic_single_fixture() -> None:
    [alert] = parse_generic(load("generic_single.json"))
    assert alert.source == "generic"
    assert alert.status == "firing"  # default
    assert alert.starts_at == datetime(2026, 11, 29, 10, tzinfo=UTC)
    assert alert.generator_url == "https://ci.example.com/canary/8812"
    assert alert.fingerprint == label_fingerprint(alert.labels)


def test_generic_batch_fixture() -> None:
    first, second = parse_generic(load("generic_batch.json"))
    assert first.fingerprint == "provider-openai-chat"
    assert second.status == "resolved"
    assert second.ends_at == datetime(2026, 11, 29, 11, 58, tzinfo=UTC)


@freeze_time("2026-11-29 13:00:00")
def test_generic_starts_at_defaults_to_now() -> None:
    [alert] = parse_body(body({"labels": {"alertname": "X"}}))
    assert alert.starts_at == datetime(2026, 11, 29, 13, tzinfo=UTC)


def test_missing_or_null_annotations_are_empty() -> None:
    payload = load("alertmanager_firing.json")
    del payload["alerts"][0]["annotations"]
    assert parse_alertmanager(payload)[0].annotations == {}
    [alert] = parse_generic({"labels": {"alertname": "X"}, "annotations": None})
    assert alert.annotations == {}


def test_naive_now_is_taken_as_utc() -> None:
    [alert] = parse_generic({"labels": {"alertname": "X"}}, now=datetime(2030, 1, 2, 3))
    assert alert.starts_at == datetime(2030, 1, 2, 3, tzinfo=UTC)


def test_generic_now_is_injectable() -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    [alert] = parse_generic({"labels": {"alertname": "X"}}, now=now)
    assert alert.starts_at == now
    [alert] = parse_body(body({"labels": {"alertname": "X"}}), now=now)
    assert alert.starts_at == now


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"labels": {"route": "chat"}}, "labels.alertname"),
        ({"labels": {"alertname": ""}}, "labels.alertname"),
        ({"annotations": {}}, "labels"),
        ({"labels": {"alertname": "X"}, "startsAt": "2026-11-29T10:00:00Z"}, "startsAt"),
        ({"labels": {"alertname": "X"}, "status": "pending"}, "status"),
        ({"labels": {"alertname": "X"}, "starts_at": "yesterday"}, "starts_at"),
        ({"labels": {"alertname": "X"}, "fingerprint": 7}, "fingerprint"),
        ({"alerts": [{"labels": {"alertname": "X"}}], "extra": 1}, "extra"),
        ({"alerts": {"labels": {}}}, "alerts"),
        ({"labels": {"alertname": "X"}, "annotations": []}, "annotations"),
        ({"labels": {"alertname": 5}}, "labels.alertname"),
        ({"labels": {"alertname": "X"}, "ends_at": "2026-11-29"}, "ends_at"),
        ({"alerts": [{"labels": {"alertname": "X"}}, "nope"]}, "alerts[1]"),
    ],
)
def test_generic_refusals_name_the_field(payload: Any, field: str) -> None:
    assert refused(payload, source="generic").field == field


def test_generic_camel_case_key_gets_a_suggestion() -> None:
    err = refused({"labels": {"alertname": "X"}, "startsAt": "2026-11-29T10:00:00Z"})
    assert "starts_at" in (err.hint or "")


def test_top_level_array_and_scalar_are_refused() -> None:
    err = refused([{"labels": {"alertname": "X"}}])
    assert "array" in err.message and '{"alerts"' in (err.hint or "")
    assert refused(42).field == "<body>"


# --- field errors, all-or-nothing ---------------------------------------------------------


def am_with(mutate: Any) -> dict[str, Any]:
    payload = load("alertmanager_group.json")
    mutate(payload)
    return payload


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (
            lambda p: p["alerts"][2]["labels"].update(severity=3),
            "alerts[2].labels.severity",
            "number",
        ),
        (lambda p: p["alerts"][1]["labels"].update(route=None), "alerts[1].labels.route", "null"),
        (lambda p: p["alerts"][0]["annotations"].update(n=[1]), "alerts[0].annotations.n", "array"),
        (
            lambda p: p["alerts"][0]["labels"].update({"a b": 1}),
            'alerts[0].labels["a b"]',
            "number",
        ),
        (lambda p: p["alerts"][1].update(status="pending"), "alerts[1].status", "pending"),
        (lambda p: p["alerts"][1].pop("status"), "alerts[1].status", "missing"),
        (
            lambda p: p["alerts"][2].update(startsAt="2026-13-40T00:00:00Z"),
            "alerts[2].startsAt",
            "2026-13",
        ),
        (
            lambda p: p["alerts"][2].update(startsAt="2026-11-29T10:00:00"),
            "alerts[2].startsAt",
            "RFC 3339",
        ),
        (
            lambda p: p["alerts"][2].update(startsAt="0001-01-01T00:00:00Z"),
            "alerts[2].startsAt",
            "zero",
        ),
        (lambda p: p["alerts"][0].pop("startsAt"), "alerts[0].startsAt", "missing"),
        (lambda p: p["alerts"][0].update(endsAt=17), "alerts[0].endsAt", "RFC 3339"),
        (lambda p: p["alerts"][0].pop("labels"), "alerts[0].labels", "missing"),
        (lambda p: p["alerts"][0].update(labels=["a"]), "alerts[0].labels", "array"),
        (lambda p: p["alerts"][0].update(generatorURL=5), "alerts[0].generatorURL", "number"),
        (lambda p: p.update(alerts=[1]), "alerts[0]", "number"),
        (lambda p: p.pop("alerts"), "alerts", "missing"),
        (lambda p: p.update(status="weird"), "status", "weird"),
    ],
)
def test_bad_fields_are_refused_with_their_path(mutate: Any, field: str, words: str) -> None:
    err = refused(am_with(mutate))
    assert err.field == field
    assert words in str(err)
    assert str(err).startswith(f"{field}: ")


def test_invalid_json_names_line_and_column() -> None:
    err = refused(b'{"alerts": [\n  {"labels": {"alertname": "X"},}\n]}')
    assert err.field == "body"
    assert "line 2, column" in err.message


def test_non_utf8_body_names_the_byte_offset() -> None:
    raw = b'{"labels": {"alertname": "caf\xe9"}}'
    err = refused(raw)
    assert err.field == "body"
    assert "offset 29" in err.message and "0xe9" in err.message


def test_utf8_bom_is_tolerated() -> None:
    [alert] = parse_body(b"\xef\xbb\xbf" + body({"labels": {"alertname": "X"}}))
    assert alert.alertname == "X"


def test_deeply_nested_json_is_refused_not_crashed() -> None:
    err = refused(b"[" * 100_000 + b"]" * 100_000)
    assert err.field == "body"


def test_lone_surrogates_become_replacement_characters() -> None:
    raw = b'{"labels": {"alertname": "X", "route": "ch\\udc80at"}, "annotations": {"s": "\\ud800"}}'
    [alert] = parse_body(raw)
    assert alert.labels["route"] == "ch\ufffdat"
    assert alert.annotations["s"] == "\ufffd"
    # Storable: encodes to UTF-8 (the store and Slack need it), raw included.
    json.dumps(alert.raw, ensure_ascii=False).encode("utf-8")
    alert.model_dump_json().encode("utf-8")


def test_valid_surrogate_pairs_survive() -> None:
    [alert] = parse_body(b'{"labels": {"alertname": "X", "e": "\\ud83d\\ude80"}}')
    assert alert.labels["e"] == "\U0001f680"


def test_huge_values_are_capped_with_a_marker() -> None:
    big = "x" * 100_000
    payload = load("alertmanager_firing.json")
    payload["alerts"][0]["annotations"]["description"] = big
    payload["alerts"][0]["labels"]["blob"] = big
    [alert] = parse_alertmanager(payload)
    for value in (alert.annotations["description"], alert.labels["blob"]):
        assert len(value) <= MAX_VALUE_CHARS
        assert value.startswith("x" * 1000)
        assert value.endswith("KB]") and "…[truncated " in value
    assert len(alert.raw["annotations"]["description"]) <= MAX_VALUE_CHARS
    # The marker states how much was cut.
    cut = 100_000 - alert.labels["blob"].index("…")
    assert f"…[truncated {cut / 1000:.1f} KB]" in alert.labels["blob"]
    # The fingerprint is of the labels as sent, like Alertmanager's.
    labels = dict(payload["alerts"][0]["labels"])
    assert alert.fingerprint == payload["alerts"][0]["fingerprint"]
    assert label_fingerprint(labels) != label_fingerprint(alert.labels)


def test_value_at_the_limit_is_kept_whole() -> None:
    exact = "y" * MAX_VALUE_CHARS
    [alert] = parse_generic({"labels": {"alertname": "X", "v": exact}}, now=datetime.now(UTC))
    assert alert.labels["v"] == exact


def test_too_many_labels_is_refused() -> None:
    labels = {f"l{i}": "v" for i in range(MAX_LABELS)} | {"alertname": "X"}
    err = refused({"alerts": [{"labels": {"alertname": "ok"}}, {"labels": labels}]})
    assert err.field == "alerts[1].labels"
    assert str(MAX_LABELS) in err.message


def test_one_bad_alert_refuses_the_whole_batch() -> None:
    payload = load("alertmanager_group.json")
    good = copy.deepcopy(payload)
    assert len(parse_alertmanager(good)) == 3
    payload["alerts"][2]["labels"]["severity"] = 1
    with pytest.raises(AlertParseError):
        parse_alertmanager(payload)


def test_untrusted_label_text_is_kept_verbatim() -> None:
    nasty = {
        "alertname": "X",
        "route": "<!channel>",
        "tmpl": "{{ 7*7 }}",
        "html": "<script>alert(1)</script> & *bold*",
    }
    [alert] = parse_body(body({"labels": nasty, "annotations": {"summary": "{% raw %}<@U123>"}}))
    assert alert.labels == nasty
    assert alert.annotations["summary"] == "{% raw %}<@U123>"
