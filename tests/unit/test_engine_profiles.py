"""Engine source profiles: which names each source's SLIs read, detection from a
/metrics page, and the sandbox's own page checked against the vLLM and sandbox profiles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_sandbox import Sandbox

from bot.adapters.cli import main
from bot.base.errors import InputError
from bot.playbook.engine_profiles import PROFILES, detect, names_in
from bot.playbook.engine_rules import normalised_rules
from bot.playbook.slo_rules import sli
from bot.playbook.slos import SHIPPED_EXAMPLE, load_slos, load_slos_text
from drills.sandbox.metrics import TTFT_BUCKETS


def test_the_sandboxs_page_is_the_sandbox_source_and_speaks_vllms_names(tmp_path: Path,
                                                                        capsys) -> None:
    sb = Sandbox(tmp_path, {"chat": {}})
    sb.chat(n=3)
    page = sb.call("GET", "/metrics").text
    found, others = detect(page)
    assert found.name == "sandbox" and "also saw litellm's names" in others
    seen = names_in(page)
    vllm = PROFILES["vllm"]
    assert vllm.ttft is not None
    # The engine-side series the sandbox emits are vLLM's names, labels and buckets.
    for name in (f"{vllm.ttft.names[0]}_bucket", vllm.kv_cache[0], vllm.waiting[0]):
        assert name in seen, name
        assert any(line.startswith(name + "{") and 'model_name="' in line
                   for line in page.splitlines()), name
    assert set(b for b in TTFT_BUCKETS if math.isfinite(b)) <= set(vllm.ttft.bounds or ())
    saved = tmp_path / "metrics.txt"
    saved.write_text(page)
    capsys.readouterr()
    assert main(["slo", "render", str(SHIPPED_EXAMPLE), "--source", "auto", "--metrics",
                 str(saved)]) == 0
    assert "source: sandbox" in capsys.readouterr().out


def test_a_page_with_no_known_names_says_which_it_looked_for() -> None:
    with pytest.raises(InputError, match="no known serving metrics") as err:
        detect("# HELP up\nup 1\nprocess_cpu_seconds_total 3\n")
    assert "--source" in (err.value.hint or "")
    assert names_in('vllm:num_requests_waiting{model_name="m"} 0\nx_total 1\n') == {
        "vllm:num_requests_waiting", "x_total"}


def test_an_slo_a_source_cannot_count_is_refused_naming_it() -> None:
    shipped = load_slos(SHIPPED_EXAMPLE)
    with pytest.raises(InputError, match="objective chat-ttft: 1.5s is not a bucket bound of "
                                         "vllm:time_to_first_token_seconds"):
        shipped.on("vllm")
    with pytest.raises(InputError, match="vllm does not judge answers"):
        load_slos_text("objectives:\n  j: {route: chat, sli: schema_valid, target: 99%}\n"
                       ).on("vllm")
    with pytest.raises(InputError, match="budgets read spend"):
        load_slos_text("budgets:\n  b: {route: chat, per_hour_usd: 5}\n").on("sglang")
    with pytest.raises(InputError, match="no metrics source 'tgi'"):
        shipped.on("tgi")


def test_each_source_reads_its_own_names_for_the_same_objective() -> None:
    o = load_slos_text("objectives:\n  e: {route: chat, sli: errors, target: 99%}\n"
                       ).objectives["e"]
    assert "litellm_proxy_failed_requests_metric_total{requested_model=\"chat\"}" in \
        sli(o, "5m", PROFILES["litellm"]).bad
    assert 'vllm:request_success_total{model_name="chat",finished_reason="error"}' in \
        sli(o, "5m", PROFILES["vllm"]).bad
    assert 'gen_ai_server_request_duration_seconds_count{gen_ai_request_model="chat",' \
           'error_type!=""}' in sli(o, "5m", PROFILES["otel"]).bad
    kv = next(r["expr"] for r in normalised_rules(PROFILES["vllm"])
              if r["record"] == "llm_incident:kv_cache_usage:ratio")
    assert "vllm:kv_cache_usage_perc" in kv and " or " in kv and "vllm:gpu_cache_usage_perc" in kv
