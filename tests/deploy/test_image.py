"""The container image as a team runs it: built from the Dockerfile, run read-only as a
non-root user with a volume for /data, healthy, taking a webhook, stopped by SIGTERM."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from integration.services import free_port, poll

from deploy.conftest import ROOT, podman

pytestmark = pytest.mark.deploy

TOKEN = "s3cret-webhook-token"


def test_the_image_serves_drills_and_stops_cleanly(image: str, tmp_path: Path) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    print(f"\nimage {image}: {size / 1e6:.0f} MB")
    volume = f"llm-incident-test-{int(time.time() * 1000)}"
    name = f"{volume}-serve"
    port = free_port()
    podman("volume", "create", volume)
    try:
        started = time.monotonic()
        podman("run", "-d", "--name", name, "--network", "host", "--read-only",
               "--tmpfs", "/tmp", "-v", f"{volume}:/data", "-e", f"LLM_INCIDENT_PORT={port}",
               "-e", f"LLM_INCIDENT_WEBHOOK_TOKEN={TOKEN}", image)

        def healthy() -> bool:
            running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert running == "true", podman("logs", name, check=False).stdout
            # The image's own HEALTHCHECK command, run now rather than on its timer.
            return podman("healthcheck", "run", name, check=False).returncode == 0

        poll(healthy, what="the container's health check", timeout=90, interval=0.5)
        print(f"start to healthy: {time.monotonic() - started:.1f} s")
        user = podman("exec", name, "id", "-u").stdout.strip()
        assert user == "10001"  # not root
        assert podman("exec", name, "touch", "/venv/x", check=False).returncode != 0  # read-only

        body = (ROOT / "tests/fixtures/alerts/alertmanager_firing.json").read_bytes()
        url = f"http://127.0.0.1:{port}/v1/alerts/alertmanager"
        assert httpx.post(url, content=body, timeout=10,
                          headers={"content-type": "application/json"}).status_code == 401
        res = httpx.post(url, content=body, timeout=10,
                         headers={"content-type": "application/json",
                                  "authorization": f"Bearer {TOKEN}"})
        assert res.status_code == 200, res.text
        incident = res.json()["alerts"][0]["incident_id"]
        listed = json.loads(podman("exec", name, "llm-incident", "incidents", "--json").stdout)
        assert [i["id"] for i in listed] == [incident]
        # The console ships in the image: its templates and stylesheet are in the package.
        page = httpx.get(f"http://127.0.0.1:{port}/ui/incidents/{incident}", timeout=10)
        assert page.status_code == 200 and f"{incident}:" in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/ui/static/console.css",
                         timeout=10).status_code == 200

        demo = podman("run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
                      "--entrypoint", "llm-incident", image, "demo", timeout=300)
        assert "score 100/100" in demo.stdout, demo.stdout[-2000:]

        podman("stop", "--time", "30", name)  # SIGTERM, as docker stop sends
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        logs = podman("logs", name).stdout + podman("logs", name).stderr
        assert code == "0", logs[-3000:]
        assert "llm-incident stopped" in logs and "Traceback" not in logs

        # The store on the volume is intact for the next container.
        again = podman("run", "--rm", "--network", "none", "-v", f"{volume}:/data",
                       "--entrypoint", "llm-incident", image, "incidents", "--json")
        assert [i["id"] for i in json.loads(again.stdout)] == [incident]
    finally:
        podman("rm", "-f", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)
