"""The web console in a real browser: headless Chromium (Debian's) driven by playwright,
against `serve` as a process.

The incident list shows a new alert's incident without a reload; the incident page's
timeline shows a later alert without a reload; a signed link approves a two-person
step as the person it names, and the policy file changes; the same link again, and an
expired one, are refused. With ``LLM_INCIDENT_SCREENSHOTS=DIR`` the main pages are
saved as PNGs there (the README's pictures come from this test).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from integration.services import (
    LoopbackHTTPServer,
    QuietHandler,
    Service,
    free_port,
    poll,
    require_binary,
    spawn,
)

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
# The flags this closed network wants: no background connections, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
POLICY = {"version": 1, "routes": {
    "chat": {"group": "chat", "max_output_tokens": 1024, "max_concurrency": 16},
    "chat-small": {"group": "chat"}, "chat-long": {}}}
USER_HEADER = "X-Forwarded-User"


def alert(fingerprint: str, instance: str) -> dict:
    return {"version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "bot",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
            "alerts": [{"status": "firing", "startsAt": "2026-12-06T10:00:00Z",
                        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                        "fingerprint": fingerprint,
                        "annotations": {"summary": "spend <b>over</b> budget"},
                        "labels": {"alertname": "LLMCostBurnRateHigh", "route": "chat",
                                   "severity": "critical", "instance": instance}}]}


@contextlib.contextmanager
def serving(tmp_path: Path, **extra_env: str) -> Iterator[Service]:
    port = free_port()
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INCIDENT_", "SLACK_"))}
    env |= {"LLM_INCIDENT_DB": str(tmp_path / "bot.db"),
            "LLM_INCIDENT_POLICY": str(tmp_path / "policy.yaml"),
            "LLM_INCIDENT_CONSOLE_URL": f"http://127.0.0.1:{port}",
            "LLM_INCIDENT_POLL_INTERVAL": "1s", "LLM_INCIDENT_USER": "alice", **extra_env}
    service = spawn("serve", [sys.executable, "-m", "bot.adapters.cli", "serve", "--port",
                              str(port)], tmp_path, f"http://127.0.0.1:{port}",
                    ready_path="/healthz", env=env)
    service.env = env  # type: ignore[attr-defined]
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def bot(tmp_path: Path):
    with serving(tmp_path) as service:
        yield service


@pytest.fixture
def proxied_bot(tmp_path: Path):
    """Behind an auth proxy: the header names whoever is signed in (the way the console
    is meant to be deployed, and where a cross-site request rides on that sign-in)."""
    with serving(tmp_path, LLM_INCIDENT_CONSOLE_USER_HEADER=USER_HEADER) as service:
        yield service


@pytest.fixture
def chromium():
    require_binary(CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser(chromium):
    return chromium.new_page(viewport={"width": 1200, "height": 900})


def cli(bot: Service, *argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv],
                          env=bot.env, capture_output=True, text=True,  # type: ignore[attr-defined]
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def shot(page, name: str) -> None:
    if where := os.environ.get("LLM_INCIDENT_SCREENSHOTS"):
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)


def test_the_console_follows_an_incident_and_approves_through_a_signed_link(bot, browser,
                                                                          tmp_path):
    page = browser
    page.goto(f"{bot.url}/ui/incidents")
    assert page.locator("h1").inner_text() == "Incidents"
    assert "No incidents match" in page.inner_text("tbody")
    post = httpx.post(f"{bot.url}/v1/alerts/alertmanager", json=alert("fp-1", "a"), timeout=10)
    assert post.status_code == 200
    # No reload: the list refreshes itself.
    page.locator("tbody a", has_text="INC-1").wait_for(timeout=15_000)
    shot(page, "incidents")

    started = time.monotonic()
    page.click("text=INC-1")
    page.locator("h1", has_text="INC-1").wait_for()
    took = time.monotonic() - started
    assert "runaway-cost" in page.inner_text("body")
    assert "<b>over</b>" not in page.content()  # the alert's markup stays text
    before = page.locator("ol.timeline li").count()
    httpx.post(f"{bot.url}/v1/alerts/alertmanager", json=alert("fp-2", "b"), timeout=10)
    # The second alert joins INC-1, and its timeline grows without a reload.
    poll(lambda: page.locator("ol.timeline li").count() > before, timeout=15,
         what="the timeline to show the new alert")
    assert took < 10

    # A two-person step asked by alice; the link lets bob approve it, once.
    cli(bot, "run", "INC-1", "disable-route", "--playbook", "runaway-cost")
    url = cli(bot, "link", "RUN-1", "--for", "bob").stdout.splitlines()[0]
    assert url.startswith(f"{bot.url}/ui/approve/")
    page.goto(f"{bot.url}/ui/incidents/INC-1")
    page.locator("article#RUN-1").wait_for()
    shot(page, "incident")
    page.goto(url)
    assert "Approve and apply as bob" in page.inner_text("body")
    assert "enabled" in page.inner_text("pre.diff")
    shot(page, "approve")
    page.click("text=Approve and apply as bob")
    page.locator("h1", has_text="RUN-1 approved by bob").wait_for()
    policy = yaml.safe_load((tmp_path / "policy.yaml").read_text())
    assert policy["routes"]["chat"]["enabled"] is False  # the change reached the target
    # The same link again: refused, and nothing else happens.
    response = page.goto(url)
    assert response is not None and response.status == 403
    assert "used already" in page.inner_text("body")
    # An expired link.
    cli(bot, "run", "INC-1", "lower-concurrency", "--playbook", "runaway-cost")
    late = cli(bot, "link", "RUN-2", "--for", "bob", "--ttl", "1s").stdout.splitlines()[0]
    time.sleep(1.5)
    response = page.goto(late)
    assert response is not None and response.status == 403
    assert "expired" in page.inner_text("body")
    page.goto(f"{bot.url}/ui/mitigations")
    assert "RUN-1" in page.inner_text("tbody")
    shot(page, "mitigations")


class Elsewhere(LoopbackHTTPServer):
    """Another web site: a second loopback server on another port (another origin)."""

    def __init__(self, pages: dict[str, str]) -> None:
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler, "")


def run_state(bot: Service, run_id: str) -> str:
    runs = json.loads(cli(bot, "runs", "--json").stdout)
    return next(r["state"] for r in runs if r["id"] == run_id)


def test_another_origin_can_neither_approve_through_a_link_nor_frame_the_console(
        proxied_bot, chromium, tmp_path):
    bot = proxied_bot
    assert httpx.post(f"{bot.url}/v1/alerts/alertmanager", json=alert("fp-1", "a"),
                      timeout=10).status_code == 200
    poll(lambda: "INC-1" in httpx.get(f"{bot.url}/ui/incidents", timeout=10).text,
         timeout=30, what="INC-1 to be listed")
    cli(bot, "run", "INC-1", "disable-route", "--playbook", "runaway-cost")
    url = cli(bot, "link", "RUN-1", "--for", "bob").stdout.splitlines()[0]
    assert run_state(bot, "RUN-1") == "awaiting_approval"
    # bob is signed in (the proxy adds the header to whatever his browser asks the
    # console), and opens a page on another site that posts the link's form for him.
    evil = Elsewhere({
        "/approve.html": f'<form id="f" method="post" action="{url}"></form>'
                         '<script>document.getElementById("f").submit()</script>',
        "/frame.html": f'<h1>Elsewhere</h1><iframe id="console" src="{bot.url}/ui/incidents">'
                       '</iframe>',
    })
    context = chromium.new_context(extra_http_headers={USER_HEADER: "bob"})
    try:
        page = context.new_page()
        with page.expect_response(lambda r: r.url == url and r.request.method == "POST",
                                  timeout=30_000) as posted:
            page.goto(f"{evil.url}/approve.html")
        assert posted.value.status == 403  # the browser did send it; the console said no
        page.locator("h1", has_text="Request refused").wait_for(timeout=15_000)
        assert "another origin" in page.inner_text("body")
        assert run_state(bot, "RUN-1") == "awaiting_approval"
        policy = yaml.safe_load((tmp_path / "policy.yaml").read_text())
        assert policy["routes"]["chat"].get("enabled", True) is True

        # A page that frames the console (to dress up a click) gets nothing shown.
        said: list[str] = []
        page.on("console", lambda message: said.append(message.text))
        page.goto(f"{evil.url}/frame.html")
        poll(lambda: any("frame-ancestors" in text for text in said), timeout=30,
             what="Chromium to refuse to frame the console")
        (framed,) = [f for f in page.frames if f is not page.main_frame]
        assert framed.locator("h1", has_text="Incidents").count() == 0

        # From the console's own page the same link still works (the refusal spent nothing).
        page.goto(url)
        assert "Approve and apply as bob" in page.inner_text("body")
        page.click("text=Approve and apply as bob")
        page.locator("h1", has_text="RUN-1 approved by bob").wait_for(timeout=30_000)
        assert run_state(bot, "RUN-1") == "applied"
        policy = yaml.safe_load((tmp_path / "policy.yaml").read_text())
        assert policy["routes"]["chat"]["enabled"] is False
    finally:
        context.close()
        evil.close()
