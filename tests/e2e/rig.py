"""The end-to-end rig: the whole loop on loopback, with real Prometheus and Alertmanager.

``SandboxRig`` starts, in this order (each stops in reverse, always):

* an asyncio loop in a thread (``LoopThread``) serving the practice gateway
  (``drills.sandbox``, in-process, no simulated waiting) and running its bounded
  traffic generator;
* Slack's Web API stand-in (``WebApiStub``, its own thread, wall-clock times);
* a real Alertmanager (group wait/interval 1s) posting to the bot's
  ``/v1/alerts/alertmanager`` with the bot's bearer token;
* a real Prometheus scraping the sandbox every second, evaluating the *fast*
  copy of the rules pack (``drills.alert_rules.render_rules``) and notifying
  that Alertmanager;
* the bot: ``bot.adapters.service.Service`` built from an environment mapping through
  ``Settings.from_env`` (tmp SQLite store, policy-file target = the sandbox's
  policy file, Prometheus for verification, Slack in HTTP mode with a signing
  secret, Web API = the stub, two on-call users), its scheduler polling every
  second, serving from its own thread and event loop.

The bot's port is picked first: Alertmanager needs the bot's URL, Prometheus
needs Alertmanager's, and the bot needs Prometheus's.

Playbooks come from a copy of the shipped ones (``fast_playbooks``) with short
TTLs and the fast rules' rate windows, so a TTL revert and a verification
happen within a test.

Test modules and ``bench/bench_e2e.py`` import these helpers as ``e2e.rig``;
the fixtures around them live in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import yaml
from integration.services import (
    ALERTMANAGER_BIN,
    PROMETHEUS_BIN,
    WebhookRecorder,
    free_port,
    poll,
    require_binary,
    start_alertmanager,
    start_prometheus,
)
from slack_webapi_stub import StubMessage, WebApiStub

from actions.policy import RoutePolicy, ServingPolicy
from bot.adapters.scheduler import Scheduler
from bot.adapters.service import Service
from bot.adapters.settings import SHIPPED_PLAYBOOKS, Settings
from bot.adapters.wiring import build_engine
from bot.core.engine import Engine
from bot.store import Incident, Run, Store
from drills.alert_rules import (
    alert_rules,
    engine_route_relabel,
    load_rules,
    threshold_of,
    write_rules,
)
from drills.harness import SANDBOX_MODEL_ROUTES, sandbox_app, serve_sandbox
from drills.sandbox.traffic import generate

SIGNING_SECRET = "e2e-signing-secret"


WEBHOOK_TOKEN = "e2e-webhook-token"


CHANNEL = "C0E2EINC"


ONCALL = ("UONCALL1", "UONCALL2")


WINDOW = "10s"  # the fast rules' rate window: 10 scrapes at 1s


WINDOW_S = 10.0


FOR = "2s"


STAGE_TIMEOUT = 90.0  # generous per stage on a loaded 2-core machine; never a timed assertion


TRAFFIC_RATE = 2.0  # requests/s: 20 per window, so one long answer cannot page


TRAFFIC_MAX_S = 600.0  # the generator's bound; each test cancels it much earlier


# Spend at 2 requests/s is ~$42/hour (~$250 blown up x6, ~$28 capped at 256 tokens):
# the cost alert's budget scales with the rate, from the scenario's $20 at 0.5/s.
COST_BUDGET_USD = 80.0


def fast_playbooks(dst: Path, *, ttl: str = "30s", window: str = WINDOW,
                   source: Path = SHIPPED_PLAYBOOKS) -> Path:
    """The shipped playbooks with every ``ttl:`` set to ``ttl`` and every ``[5m]`` rate
    window (diagnose and verify queries) set to ``window``, like the fast rules copy."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"(?m)^(\s+ttl:)\s*\S+\s*$", rf"\g<1> {ttl}", text)
        text = text.replace("[5m]", f"[{window}]")
        (dst / path.name).write_text(text, encoding="utf-8")
    return dst


class LoopThread:
    """An asyncio loop in a daemon thread; ``run``/``submit`` hand it coroutines."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


class Sandbox:
    """The practice gateway served from ``loop``; faults and traffic from the test thread."""

    def __init__(self, loop: LoopThread, policy: Path, *, seed: int = 7) -> None:
        self.loop = loop
        self.policy = policy
        self._stack = contextlib.AsyncExitStack()
        self.url: str = loop.run(self._start(seed))

    async def _start(self, seed: int) -> str:
        return await self._stack.enter_async_context(serve_sandbox(sandbox_app(self.policy,
                                                                                seed=seed)))

    @property
    def address(self) -> str:
        return urlsplit(self.url).netloc

    def traffic(self, routes: list[str], rate_per_s: float = TRAFFIC_RATE,
                duration_s: float = TRAFFIC_MAX_S,
                customers: dict[str, float] | None = None) -> concurrent.futures.Future[Any]:
        """Start bounded traffic (spread over ``customers`` by weight, when given);
        cancel the returned future to stop it early."""
        return self.loop.submit(generate(self.url, routes=routes, rate_per_s=rate_per_s,
                                         duration_s=duration_s, customers=customers))

    def add_fault(self, body: Mapping[str, Any]) -> str:
        resp = httpx.post(f"{self.url}/faults", json=dict(body), timeout=10)
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/faults", timeout=10).raise_for_status()

    def faults(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/faults", timeout=10).json()["faults"]

    def stop(self) -> None:
        self.loop.run(self._stack.aclose())


def write_policy(path: Path, routes: Mapping[str, Mapping[str, Any]]) -> None:
    """A policy listing every route the sandbox serves (the bot acts only on listed
    routes), with ``routes``' settings on top."""
    from drills.sandbox import load_config

    served: dict[str, dict[str, Any]] = {name: {} for name in load_config().routes}
    for name, fields in routes.items():
        served.setdefault(name, {}).update(fields)
    path.write_text(yaml.safe_dump({"version": 1, "routes": served}))


def patch_policy(path: Path, routes: Mapping[str, Mapping[str, Any]]) -> None:
    """Merge ``{route: {field: value}}`` into the policy file (a release, by hand)."""
    doc = yaml.safe_load(path.read_text()) or {"version": 1, "routes": {}}
    for route, fields in routes.items():
        doc.setdefault("routes", {}).setdefault(route, {}).update(fields)
    path.write_text(yaml.safe_dump(doc))


def policy_routes(path: Path, routes: Iterable[str] = ()) -> dict[str, Any]:
    """The serving policy's routes as the gateway sees them: defaults filled in, and a
    route the file does not name (``routes``) shown with the defaults it gets."""
    policy = ServingPolicy.model_validate(yaml.safe_load(path.read_text()))
    out = policy.model_dump(mode="json")["routes"]
    for route in routes:
        out.setdefault(route, RoutePolicy().model_dump(mode="json"))
    return out


def prom_query(prom_url: str, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom_url}/api/v1/query", params={"query": promql}, timeout=10)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def prom_value(prom_url: str, promql: str) -> float | None:
    result = prom_query(prom_url, promql)
    return float(result[0]["value"][1]) if result else None


def prom_alerts(prom_url: str, alertname: str, state: str = "firing") -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom_url}/api/v1/alerts", timeout=10)
    resp.raise_for_status()
    return [a for a in resp.json()["data"]["alerts"]
            if a["labels"].get("alertname") == alertname and a["state"] == state]


def threshold_of_alert(rules: Path, alertname: str) -> tuple[str, float]:
    """The comparison and constant an alert of a rules file trips on (``(">", 80.0)``)."""
    return threshold_of(alert_rules(load_rules(rules))[alertname])


class Bot:
    """``Service`` from an environment mapping, serving from its own thread and loop.

    ``store`` is a second connection for the test thread (the service's belongs to
    its loop's thread); SQLite's WAL lets it read what the service committed."""

    def __init__(self, environ: Mapping[str, str], port: int, *,
                 poll_interval: timedelta = timedelta(seconds=1)) -> None:
        self.settings = Settings.from_env(dict(environ))
        self.engine: Engine = build_engine(self.settings)
        self.scheduler = Scheduler(self.engine, poll_interval=poll_interval)
        self.service = Service(self.settings, "127.0.0.1", port, engine=self.engine,
                               scheduler=self.scheduler)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="llm-incident-e2e", daemon=True)
        self.thread.start()
        poll(lambda: self.service.url or self.error, what="the bot to listen", timeout=60)
        assert self.error is None, self.error
        self.url: str = self.service.url  # type: ignore[assignment]
        self.store = Store(self.settings.db_path)

    def _main(self) -> None:
        try:
            asyncio.run(self.service.run())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(timeout=60)
        self.store.close()
        assert not self.thread.is_alive(), "the bot did not stop"
        assert self.error is None, self.error

    # --- reads through the test thread's connection ----------------------------------

    def incident(self, incident_id: str) -> Incident:
        return self.store.incident(incident_id)

    def run(self, run_id: str) -> Run:
        return self.store.run(run_id)

    def statuses(self, incident_id: str) -> list[str]:
        """The incident's status changes, in order (``open`` first)."""
        return ["open"] + [e.data["to"] for e in self.store.timeline(incident_id)
                           if e.kind == "status"]


def sign(body: bytes, secret: str = SIGNING_SECRET, ts: int | None = None) -> dict[str, str]:
    """Slack's request signature: ``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{body}``."""
    ts = int(time.time()) if ts is None else ts
    base = b"v0:" + str(ts).encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


@dataclass(frozen=True)
class SlackButton:
    action_id: str
    block_id: str
    value: str
    text: str

    @property
    def action(self) -> str:
        return self.action_id.split("#", 1)[0]


def buttons_of(msg: StubMessage) -> list[SlackButton]:
    out = []
    for block in msg.blocks or []:
        if not isinstance(block, dict) or block.get("type") != "actions":
            continue
        for el in block.get("elements", []):
            if el.get("type") == "button":
                out.append(SlackButton(el["action_id"], block.get("block_id", ""),
                                       str(el.get("value", "")),
                                       str((el.get("text") or {}).get("text", ""))))
    return out


class Slack:
    """What Slack's servers would do: keep what the bot posted (the stub's messages, as
    edited since) and POST signed ``block_actions`` payloads when someone clicks."""

    _seq = itertools.count(1)

    def __init__(self, api: WebApiStub, bot_url: str, responses: Any) -> None:
        self.api = api
        self.bot_url = bot_url
        self.responses = responses  # WebhookRecorder: bolt's `respond` lands here

    def messages(self) -> list[StubMessage]:
        return sorted(list(self.api.messages.values()), key=lambda m: float(m.ts))

    def top_message(self, playbook: str, step: str) -> tuple[StubMessage, SlackButton] | None:
        """The suggestion: a top-level message offering Run step for ``playbook``'s ``step``."""
        for msg in self.messages():
            if msg.thread_ts:
                continue
            for b in buttons_of(msg):
                if b.action == "run_step" and b.value.endswith(f":{playbook}:{step}"):
                    return msg, b
        return None

    def thread_messages(self, top_ts: str) -> list[StubMessage]:
        return [m for m in self.messages() if m.thread_ts == top_ts]

    def thread_button(self, top_ts: str, action: str, value: str
                      ) -> tuple[StubMessage, SlackButton] | None:
        for msg in self.thread_messages(top_ts):
            for b in buttons_of(msg):
                if b.action == action and b.value == value:
                    return msg, b
        return None

    def thread_texts(self, top_ts: str) -> list[str]:
        return [f"{m.text} {json.dumps(m.blocks)}" for m in self.thread_messages(top_ts)]

    def click(self, user: str, button: SlackButton, message_ts: str) -> httpx.Response:
        n = next(self._seq)
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "team_id": "T0STUB"},
            "api_app_id": "A0STUB", "token": "legacy", "trigger_id": f"{n}.e2e",
            "team": {"id": "T0STUB", "domain": "stub"},
            "channel": {"id": CHANNEL, "name": "incidents"},
            "container": {"type": "message", "message_ts": message_ts, "channel_id": CHANNEL},
            "message": {"type": "message", "ts": message_ts},
            "response_url": self.responses.url,
            "actions": [{"action_id": button.action_id, "block_id": button.block_id,
                         "value": button.value, "type": "button",
                         "text": {"type": "plain_text", "text": button.text},
                         "action_ts": f"{time.time():.6f}"}],
        }
        body = urlencode({"payload": json.dumps(payload)}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(body)}
        resp = httpx.post(f"{self.bot_url}/slack/events", content=body, headers=headers,
                          timeout=30)
        assert resp.status_code == 200, f"Slack's POST got {resp.status_code}: {resp.text}"
        return resp

    def refusals(self) -> list[dict[str, Any]]:
        """What bolt answered the clicker privately (refusals, broken buttons)."""
        return list(self.responses.received)


class Rig:
    """What every loop needs around its serving target: Slack's stand-ins, Alertmanager,
    Prometheus and the bot, started in dependency order. ``close()`` stops everything
    started so far, in reverse, even after a failed start."""

    def __init__(self, workdir: Path) -> None:
        require_binary(PROMETHEUS_BIN)
        require_binary(ALERTMANAGER_BIN)
        self.workdir = workdir
        self._closers: list[Callable[[], None]] = []

    def on_close(self, closer: Callable[[], None]) -> None:
        self._closers.append(closer)

    def start_bot_side(self, *, scrape_target: str, rules: Path, ttl: str,
                       scrape_options: Mapping[str, Any] | None = None,
                       environ: Mapping[str, str] | None = None) -> None:
        """Stub + response recorder, Alertmanager, Prometheus (scraping ``scrape_target``,
        host:port, with ``rules``), then the bot; ``environ`` adds to the bot's settings."""
        wd = self.workdir
        self.rules = rules
        stub = WebApiStub(clock=time.time)
        stub_cm = stub.serving_in_thread()
        self.api = stub_cm.__enter__()
        self.on_close(lambda: stub_cm.__exit__(None, None, None))
        responses = WebhookRecorder()
        self.on_close(responses.close)

        bot_port = free_port()
        bot_url = f"http://127.0.0.1:{bot_port}"
        self.alertmanager = start_alertmanager(
            wd / "alertmanager", f"{bot_url}/v1/alerts/alertmanager", bearer_token=WEBHOOK_TOKEN,
            group_wait="1s", group_interval="1s", repeat_interval="1h")
        self.on_close(self.alertmanager.stop)

        prom_cm = start_prometheus(wd / "prometheus", targets=[scrape_target], rule_files=[rules],
                                   alertmanager_url=self.alertmanager.url,
                                   scrape_options=dict(scrape_options or {}))
        self.prometheus = prom_cm.__enter__()
        self.on_close(lambda: prom_cm.__exit__(None, None, None))

        env = {
            "LLM_INCIDENT_DB": str(wd / "bot.db"),
            "LLM_INCIDENT_PLAYBOOKS": str(fast_playbooks(wd / "playbooks", ttl=ttl)),
            "LLM_INCIDENT_PROMETHEUS_URL": self.prometheus.url,
            "LLM_INCIDENT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
            "LLM_INCIDENT_USER": "e2e",
            "SLACK_BOT_TOKEN": "xoxb-e2e",
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "LLM_INCIDENT_SLACK_API_URL": self.api.base_url,
            "LLM_INCIDENT_SLACK_CHANNEL": CHANNEL,
            "LLM_INCIDENT_ONCALL_USERS": ",".join(ONCALL),
            **(environ or {}),
        }
        self.bot = Bot(env, bot_port)
        self.on_close(self.bot.stop)
        self.slack = Slack(self.api, self.bot.url, responses)

    def close(self) -> None:
        errors = []
        while self._closers:
            try:
                self._closers.pop()()
            except BaseException as exc:  # noqa: BLE001 - stop the rest, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SandboxRig(Rig):
    """The sandbox loop: the practice gateway (policy file in tmp) plus the bot side, with
    the fast rules pack and the bot's ``default`` target on the sandbox's policy file."""

    def __init__(self, workdir: Path, *, ttl: str = "30s", rules: Path | None = None) -> None:
        """``rules``: a rules file of the test's own instead of the fast rules pack."""
        super().__init__(workdir)
        try:
            self.policy = workdir / "serving-policy.yaml"
            write_policy(self.policy, {})
            self.loop = LoopThread("e2e-sandbox")
            self.on_close(self.loop.close)
            self.sandbox = Sandbox(self.loop, self.policy)
            self.on_close(self.sandbox.stop)
            rules = rules or write_rules(
                workdir / "rules.fast.yaml", for_=FOR, window=WINDOW, interval="1s",
                thresholds={"LLMCostBurnRateHigh": COST_BUDGET_USD})
            self.start_bot_side(
                scrape_target=self.sandbox.address, rules=rules, ttl=ttl,
                # vLLM-named series carry the model; the rules read the route.
                scrape_options={"metric_relabel_configs":
                                engine_route_relabel(SANDBOX_MODEL_ROUTES)},
                environ={"LLM_INCIDENT_POLICY": str(self.policy)})
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SandboxRig:
        return self
