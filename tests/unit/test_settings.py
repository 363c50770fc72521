"""Settings and the targets file: bad input names the variable, file or target and what to do."""

from datetime import timedelta

import pytest

from actions.drivers.http import HttpDriver
from actions.drivers.policy_file import PolicyFileDriver
from bot.adapters.settings import Settings
from bot.adapters.wiring import build_driver
from bot.base.errors import InputError


def test_defaults_work_with_an_empty_environment():
    s = Settings.from_env({})
    assert s.db_path.name == "llm-incident.db" and s.prometheus_url is None
    assert s.target_configs() == {"default": {"driver": "policy_file",
                                              "path": str(s.policy_path)}}


def test_environment_values_are_parsed():
    s = Settings.from_env({"LLM_INCIDENT_APPROVAL_TTL": "30m", "LLM_INCIDENT_MAX_ACTIVE": "5",
                           "LLM_INCIDENT_PROMETHEUS_URL": "http://127.0.0.1:9090/"})
    assert s.approval_ttl == timedelta(minutes=30)
    assert s.max_active_mitigations == 5
    assert s.prometheus_url == "http://127.0.0.1:9090"


@pytest.mark.parametrize("env, name", [
    ({"LLM_INCIDENT_APPROVAL_TTL": "soon"}, "LLM_INCIDENT_APPROVAL_TTL"),
    ({"LLM_INCIDENT_MAX_ACTIVE": "0"}, "LLM_INCIDENT_MAX_ACTIVE"),
    ({"LLM_INCIDENT_MAX_ACTIVE": "three"}, "LLM_INCIDENT_MAX_ACTIVE"),
    ({"LLM_INCIDENT_SELF_APPROVAL": "maybe"}, "LLM_INCIDENT_SELF_APPROVAL"),
    ({"LLM_INCIDENT_FLAP_WINDOW": "a while"}, "LLM_INCIDENT_FLAP_WINDOW"),
    ({"LLM_INCIDENT_DRILL_SPEED": "fast"}, "LLM_INCIDENT_DRILL_SPEED"),
    ({"LLM_INCIDENT_DRILL_SPEED": "0.5"}, "LLM_INCIDENT_DRILL_SPEED"),
    ({"LLM_INCIDENT_DRILL_SPEED": "nan"}, "LLM_INCIDENT_DRILL_SPEED"),
])
def test_bad_environment_values_name_the_variable(env, name):
    with pytest.raises(InputError, match=name):
        Settings.from_env(env)


def test_targets_file_adds_targets_next_to_the_default(tmp_path):
    f = tmp_path / "targets.yaml"
    f.write_text("targets:\n  gateway:\n    driver: http\n    base_url: http://127.0.0.1:1\n"
                 "    read: {method: GET, url: /policy}\n"
                 "    actions: {default: {method: PUT, url: '/routes/{{ route }}', "
                 "json_values: true}}\n")
    s = Settings.from_env({"LLM_INCIDENT_TARGETS": str(f)})
    targets = s.target_configs()
    assert set(targets) == {"default", "gateway"}
    assert isinstance(build_driver("default", targets["default"], s), PolicyFileDriver)
    assert isinstance(build_driver("gateway", targets["gateway"], s), HttpDriver)


@pytest.mark.parametrize("text, expect", [
    ("targets: [a, b]\n", "must be a mapping"),
    ("targets:\n  gw: {base_url: x}\n", "targets.gw: needs a `driver` key"),
    ("targets: {gw: [unclosed\n", "cannot read targets file"),
])
def test_bad_targets_file_names_the_file_and_target(tmp_path, text, expect):
    f = tmp_path / "targets.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match="targets") as err:
        Settings.from_env({"LLM_INCIDENT_TARGETS": str(f)}).target_configs()
    assert expect in str(err.value)


def test_missing_targets_file_is_a_clear_error(tmp_path):
    s = Settings.from_env({"LLM_INCIDENT_TARGETS": str(tmp_path / "nope.yaml")})
    with pytest.raises(InputError, match="nope.yaml"):
        s.target_configs()


@pytest.mark.parametrize("cfg, expect", [
    ({"driver": "kubernetes"}, "unknown driver 'kubernetes'"),
    ({"driver": "policy_file"}, "needs `path`"),
    ({"driver": "http", "base_url": "http://127.0.0.1:1", "bogus": 1}, "target 'gw'"),
])
def test_bad_target_config_names_the_target(cfg, expect):
    with pytest.raises(InputError) as err:
        build_driver("gw", cfg, Settings())
    assert expect in str(err.value)


def test_new_settings_are_parsed():
    s = Settings.from_env({"LLM_INCIDENT_SELF_APPROVAL": "false", "LLM_INCIDENT_FLAP_WINDOW": "0",
                           "LLM_INCIDENT_DRILL_SPEED": "60",
                           "LLM_INCIDENT_ALERT_POSTERS": "B0AM, A0AM"})
    assert s.self_approval is False and s.flap_window == timedelta(0)
    assert s.drill_speed == 60.0 and s.alert_posters == ("B0AM", "A0AM")



def test_a_postgres_url_in_llm_incident_db_is_kept_whole_and_files_go_beside_the_policy():
    from pathlib import Path

    from bot.adapters.settings import Settings

    s = Settings.from_env({"LLM_INCIDENT_DB": "postgresql://bot:pw@db.internal:5432/llm",
                           "LLM_INCIDENT_POLICY": "/srv/policy.yaml"})
    assert s.store_location == "postgresql://bot:pw@db.internal:5432/llm"  # not a Path
    assert s.state_dir == Path("/srv")
    assert "pw" not in repr(s)  # the URL (with its password) is kept out of repr
    back = s.with_db("var/other.db")
    assert back.db_url is None and back.store_location == "var/other.db"
