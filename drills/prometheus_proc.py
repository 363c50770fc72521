"""A real Prometheus for a drill: scrapes the sandbox every second, evaluates the fast rules.

Used by ``llm-incident demo --prometheus``, the drill integration test and
``bench/bench_drill.py``. The binary is looked up on ``PATH`` (Debian package
``prometheus``); it runs as a plain background process bound to 127.0.0.1 with
its own storage under ``workdir``, is waited on through ``/-/ready`` with a
deadline, and is always stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

from bot.base.errors import InputError
from drills.alert_rules import engine_route_relabel, write_rules

READY_TIMEOUT_S = 60.0
WINDOW_S = 10  # the fast rules' rate window; a drill warms up at least this long plus a bit
WARMUP_S = WINDOW_S + 2


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def start_prometheus_for(
    workdir: Path,
    target_url: str,
    *,
    for_: str = "2s",
    window: str = f"{WINDOW_S}s",
    interval: str = "1s",
    thresholds: Mapping[str, float] | None = None,
    model_routes: Mapping[str, str] | None = None,
) -> AsyncIterator[str]:
    """Run Prometheus on a free loopback port; yields its base URL."""
    binary = prometheus_binary()
    if binary is None:
        raise InputError("prometheus is not installed",
                         hint="install the Debian package prometheus, or drop --prometheus")
    workdir = Path(workdir) / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    rules = write_rules(workdir / "rules.fast.yaml", for_=for_, window=window,
                        interval=interval, thresholds=thresholds)
    from drills.harness import SANDBOX_MODEL_ROUTES

    scrape = {
        "job_name": "drill-target",
        "static_configs": [{"targets": [urlsplit(target_url).netloc]}],
        "metric_relabel_configs": engine_route_relabel(model_routes or SANDBOX_MODEL_ROUTES),
    }
    config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
              "rule_files": [str(rules)], "scrape_configs": [scrape]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         f"--web.external-url={url}/", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        async with httpx.AsyncClient() as client:
            while True:
                if proc.poll() is not None:
                    raise InputError(f"prometheus exited with {proc.returncode}; "
                                     f"see {workdir / 'prometheus.log'}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/-/ready", timeout=2)).status_code == 200:
                        break
                if loop.time() > deadline:
                    raise InputError(f"prometheus at {url} not ready after {READY_TIMEOUT_S:g}s")
                await asyncio.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        log.close()
