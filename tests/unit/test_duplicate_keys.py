"""A webhook body with a key twice in one object is refused (400), naming the key and
its path: a decoder keeping the last value would let a sender (or a proxy that
appends) slip a second ``route`` or ``severity`` past whatever checked the first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bot.base.errors import AlertParseError
from bot.intake.parse import parse_body

sys.path.insert(0, str(Path(__file__).parent))
from test_web import AM, GENERIC, GRAFANA, Bot  # noqa: E402

AM_BODY = ('{"version": "4", "groupKey": "g", "status": "firing", "receiver": "bot", '
           '"alerts": [{"status": "firing", "labels": {"alertname": "A", "route": "chat"}, '
           '"startsAt": "2026-11-29T10:00:00Z"}, {"status": "firing", "labels": '
           '{"alertname": "B", "route": "chat", "severity": "info", "route": "chat-small"}, '
           '"startsAt": "2026-11-29T10:00:00Z"}]}')
GRAFANA_BODY = ('{"orgId": 1, "status": "firing", "alerts": [{"status": "firing", '
                '"labels": {"alertname": "A"}, "startsAt": "2026-11-29T10:00:00Z", '
                '"annotations": {"summary": "one", "summary": "two"}}]}')
GENERIC_BODY = '{"labels": {"alertname": "A"}, "status": "firing", "status": "resolved"}'


@pytest.mark.parametrize(("path", "body", "field", "key"), [
    (AM, AM_BODY, "alerts[1].labels.route", "route"),
    (GRAFANA, GRAFANA_BODY, "alerts[0].annotations.summary", "summary"),
    (GENERIC, GENERIC_BODY, "status", "status"),
])
def test_a_repeated_key_is_400_naming_the_key_and_its_path(tmp_path, path, body, field, key):
    bot = Bot(tmp_path)
    res = bot.post(path, body.encode())
    assert res.status_code == 400, res.text
    err = res.json()
    assert err["field"] == field, err
    assert f"key '{key}' appears twice in one object" in err["error"], err
    bot.assert_nothing_stored()


def test_the_same_key_spelt_with_escapes_is_the_same_key_and_the_first_one_is_named():
    body = b'[{"labels": {"a": "1"}}, {"labels": {"x.y": 1, "b": 2, "x\\u002ey": 3}}, {"c": 1, "c": 2}]'
    with pytest.raises(AlertParseError) as err:
        parse_body(body)
    assert err.value.field == '[1].labels["x.y"]'
    # Keys that only look alike are different keys: nothing to refuse.
    (alert,) = parse_body(b'{"labels": {"alertname": "A", "Route": "x", "route": "y"}}')
    assert (alert.labels["Route"], alert.labels["route"]) == ("x", "y")
