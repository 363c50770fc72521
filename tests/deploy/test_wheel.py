"""A wheel installed into a fresh venv, run from another folder: what `pip install .` gives."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from deploy.conftest import ROOT, run

pytestmark = pytest.mark.deploy


@pytest.fixture(scope="module")
def installed(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-index", "--find-links",
         str(wheelhouse), "llm-incident"], timeout=900)
    return venv / "bin" / "llm-incident"


def cli(exe: Path, cwd: Path, *args: str, check: bool = True):
    # Nothing from the checkout: no LLM_INCIDENT_* overrides, another folder.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
    env["PYTHONPATH"] = ""
    return run([str(exe), *args], cwd=cwd, env=env, check=check, timeout=300)


def test_the_installed_package_finds_its_files_from_any_folder(installed: Path, tmp_path: Path):
    where = cli(installed, tmp_path, "playbooks", "--json").stdout
    assert len(json.loads(where)) == 8
    # The package in the venv, not this checkout.
    site = installed.parent.parent
    shipped = next(site.glob("lib/python3*/site-packages/bot/shipped/playbooks"))
    assert (shipped / "alerts" / "rules.yaml").is_file()
    assert (shipped / "playbook.schema.json").is_file()

    lint = cli(installed, tmp_path, "lint")
    assert "ok: no problems" in lint.stdout and str(shipped) in lint.stdout
    tests = cli(installed, tmp_path, "test")
    cases = sum(len(yaml.safe_load(f.read_text())["tests"])
                for f in (ROOT / "playbooks" / "tests").glob("*.test.yaml"))
    assert cases > 10 and f"{cases} passed, 0 failed" in tests.stdout

    alert = tmp_path / "alert.json"
    alert.write_text((ROOT / "tests/fixtures/alerts/alertmanager_firing.json").read_text())
    match = cli(installed, tmp_path, "match", str(alert), "--json")
    assert json.loads(match.stdout)[0]["matches"][0]["playbook"] == "runaway-cost"

    # The customer drill and the SLO sources ship, and run from another folder.
    drill = cli(installed, tmp_path, "--db", str(tmp_path / "d.db"), "drill", "run",
                "runaway-customer", "--auto-respond")
    assert "completed, score 100/100" in drill.stdout, drill.stdout[-2000:]
    slos = tmp_path / "slos.yaml"
    slos.write_text("version: 1\nobjectives:\n  e: {route: chat, sli: errors, target: 99%}\n")
    cli(installed, tmp_path, "slo", "render", str(slos), "--source", "litellm", "--out",
        str(tmp_path / "rules"))
    assert "llm_incident:requests:rate5m" in (tmp_path / "rules" / "slo-rules.yaml").read_text()
    # The shipped example's 1.5 s TTFT is no vLLM bucket bound: said so, nothing written.
    refused = cli(installed, tmp_path, "slo", "render", "--source", "vllm", check=False)
    assert refused.returncode == 2 and "not a bucket bound of vllm:" in refused.stderr

    demo = cli(installed, tmp_path, "demo")
    assert "score 100/100" in demo.stdout and "Serving policy after the drill: restored" \
        in demo.stdout


def test_test_scaffolding_is_not_installed(installed: Path):
    site = next(installed.parent.parent.glob("lib/python3*/site-packages"))
    notifier = site / "bot" / "core" / "notifier.py"
    assert notifier.is_file()
    for leftover in ("bot/adapters/slack/webapi_stub.py", "actions/drivers/fakes.py", "tests"):
        assert not (site / leftover).exists(), leftover
    assert "RecordingNotifier" not in notifier.read_text()
    # The layers' packages and their data ship: the postmortem templates, the playbooks.
    assert list((site / "bot" / "core" / "templates").glob("*.j2"))
    console = site / "bot" / "adapters" / "console"
    assert (console / "templates" / "incident.html.j2").is_file()
    assert (console / "static" / "console.css").is_file()
    assert (console / "static" / "console.js").is_file()
    assert (site / "bot" / "shipped" / "playbooks" / "runaway-cost.yaml").is_file()
