"""Schemathesis against the served OpenAPI document: no input makes the service answer 5xx.

Positive cases (bodies that follow the documented schemas, with hostile strings,
odd timestamps and huge numbers) and negative ones (bodies that break them) go
through every operation of the in-process ASGI app. A 5xx would make
Alertmanager retry a payload forever, so ``not_a_server_error`` is the check.
The example count is bounded so the whole run stays well under a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fakes import RecordingNotifier
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from bot.adapters.service_metrics import ServiceMetrics
from bot.adapters.settings import Settings
from bot.adapters.web import create_app
from bot.adapters.wiring import build_engine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def web_schema(tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = Settings(db_path=Path(":memory:"), policy_path=tmp / "policy.yaml",
                   max_body_bytes=256 * 1024)
    engine = build_engine(cfg)
    engine.notifier = RecordingNotifier()
    app = create_app(engine, cfg, metrics=ServiceMetrics(engine.store))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("web_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case: schemathesis.Case) -> None:
    response = case.call_and_validate(checks=[not_a_server_error])
    assert response.status_code < 500, response.text
