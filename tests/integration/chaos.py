"""What the chaos tests (``test_replicas_chaos.py``) and ``bench/bench_failover.py``
do to replicas beyond killing them: hold the store's write lock from another
session, stop a leader while it is inside a write transaction, skew one replica's
clock with libfaketime, and read back who leads and what the target saw.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from integration.replicas import Cluster, query
from integration.services import poll

from bot.store.backend import WRITE_LOCK_KEY

#: The lease the chaos tests run with: short enough for CI, long enough that a loaded
#: 2-core box renews on time (every second).
LEASE = 4.0


def faketime_library() -> str:
    """libfaketime's multi-threaded preload library (Debian package ``libfaketime``)."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        pytest.fail("libfaketime is not installed; install the Debian package faketime "
                    "(tests/run.sh does)", pytrace=False)
    return found[0]


class ChaosCluster(Cluster):
    """``Cluster`` with a clock offset per slot (``skew={1: "+30s"}``) and a fast poll."""

    def __init__(self, tmp: Path, db_url: str, routes: list[str], *, ttl: int,
                 skew: dict[int, str] | None = None, lease: float = LEASE,
                 db_urls: dict[int, str] | None = None) -> None:
        super().__init__(tmp, db_url, routes, lease=lease, ttl=ttl)
        self.skew = skew or {}
        self.db_urls = db_urls or {}  # a slot reaching the database by another address
        self.env["LLM_INCIDENT_POLL_INTERVAL"] = "1s"

    def start(self, slot: int) -> None:
        base = self.env
        if slot in self.skew:
            # The whole process sees the shifted clock: time(), datetime, monotonic.
            self.env = base | {"FAKETIME": self.skew[slot], "LD_PRELOAD": faketime_library(),
                               "FAKETIME_DONT_RESET": "1"}
        if slot in self.db_urls:
            self.env = self.env | {"LLM_INCIDENT_DB": self.db_urls[slot]}
        try:
            super().start(slot)
        finally:
            self.env = base

    def pid(self, slot: int) -> int:
        proc = self.procs[slot]
        assert proc is not None
        return int(proc.process.pid)

    def signal(self, slot: int, sig: signal.Signals) -> None:
        proc = self.procs[slot]
        assert proc is not None
        proc.process.send_signal(sig)

    def holder(self) -> int | None:
        """The slot holding a live lease by the database's clock, else None."""
        rows = query(self.db_url, "SELECT holder FROM leases WHERE name = 'leader' "
                     "AND expires_at::timestamptz > clock_timestamp()")
        if not rows:
            return None
        pid = str(rows[0][0]).split(":")[1]
        return next((s for s in (0, 1) if self.procs[s] is not None
                     and str(self.pid(s)) == pid), None)


def lease_row(db_url: str) -> tuple[str, int, datetime, datetime]:
    """(holder, token, acquired_at, expires_at) of the leader lease."""
    ((holder, token, acquired, expires),) = query(
        db_url, "SELECT holder, token, acquired_at, expires_at FROM leases "
        "WHERE name = 'leader'")
    return str(holder), int(token), datetime.fromisoformat(acquired), \
        datetime.fromisoformat(expires)


def db_now(db_url: str) -> datetime:
    return query(db_url, "SELECT clock_timestamp()")[0][0].astimezone(UTC)


def probe(url: str, timeout: float = 15.0) -> int:
    """POST one new alert (no playbook matches it) to a replica: a write transaction.
    Returns the status code (0: no answer in time)."""
    now = datetime.now(UTC)
    fp = uuid.uuid4().hex[:16]
    body = {"version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "bot",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
            "alerts": [{"status": "firing", "startsAt": now.isoformat(),
                        "endsAt": (now + timedelta(hours=1)).isoformat(),
                        "generatorURL": "", "fingerprint": fp, "annotations": {},
                        "labels": {"alertname": "ChaosProbe", "probe": fp,
                                   "severity": "info"}}]}
    try:
        return httpx.post(f"{url}/v1/alerts/alertmanager", json=body,
                          timeout=timeout).status_code
    except httpx.HTTPError:
        return 0


def healthz(url: str) -> int:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


@contextmanager
def write_lock_held(db_url: str) -> Iterator[Any]:
    """Another session (an operator's psql, a stuck migration) holds the store's write
    lock until the block ends."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [WRITE_LOCK_KEY])
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [WRITE_LOCK_KEY])


def client_ports(pid: int, server_port: int) -> set[int]:
    """The local ports of process ``pid``'s TCP connections to ``server_port``, from
    /proc: how a backend is matched to its replica whatever the replica tells Postgres."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[9] in inodes and int(f[2].rsplit(":", 1)[1], 16) == server_port:
                    ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def backend_waiting_for_write_lock(db_url: str, pid: int) -> int | None:
    """The Postgres backend of process ``pid`` while it waits for the write lock, else
    None."""
    ports = client_ports(pid, int(urlsplit(db_url).port or 5432))
    if not ports:
        return None
    rows = query(db_url, "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                 f"WHERE a.client_port IN ({', '.join(str(p) for p in ports)}) "
                 "AND l.locktype = 'advisory' AND NOT l.granted")
    return int(rows[0][0]) if rows else None


def backend_holds_write_lock_idle(db_url: str, backend: int) -> bool:
    rows = query(db_url, "SELECT a.state FROM pg_stat_activity a JOIN pg_locks l "
                 "ON l.pid = a.pid WHERE a.pid = %s AND l.locktype = 'advisory' AND l.granted"
                 .replace("%s", str(int(backend))))
    return bool(rows) and rows[0][0] == "idle in transaction"


def stop_inside_a_transaction(cluster: ChaosCluster, slot: int) -> float:
    """SIGSTOP replica ``slot`` while it holds the write lock inside a transaction:
    another session holds the lock until the replica's next write (its lease round)
    waits for it, the replica is stopped there, and the lock is handed on, so its
    backend takes it and sits idle in the transaction with nobody to end it.
    Returns the monotonic time of the SIGSTOP."""
    with write_lock_held(cluster.db_url):
        backend = poll(lambda: backend_waiting_for_write_lock(cluster.db_url, cluster.pid(slot)),
                       what=f"replica {slot} waiting for the write lock", timeout=15,
                       interval=0.02)
        cluster.signal(slot, signal.SIGSTOP)
        stopped = time.monotonic()
    # Its backend has the lock now (after whoever queued before it), with the client
    # stopped: the transaction stays open until the server cuts it off.
    poll(lambda: backend_holds_write_lock_idle(cluster.db_url, backend),
         what=f"replica {slot} stopped idle inside a transaction holding the write lock",
         timeout=5, interval=0.01)
    return stopped


def target_writes(tmp: Path) -> Counter[tuple[str, str]]:
    """(run, op) -> how often the target's change log has it (fences left out)."""
    path = tmp / "policy.yaml.changes"
    if not path.exists():
        return Counter()
    log = [json.loads(line) for line in path.read_text().splitlines()]
    return Counter((e["run"], e["op"]) for e in log if e["op"] != "fence")


def assert_no_double_writes(tmp: Path) -> Counter[tuple[str, str]]:
    writes = target_writes(tmp)
    doubled = {k: n for k, n in writes.items() if n != 1}
    assert not doubled, f"a change written to the target more than once: {doubled}"
    return writes


def assert_not_stuck(cluster: ChaosCluster, *, within: float = 30.0) -> None:
    """Every replica answers /healthz 200 and takes a new alert (2xx), and one leads."""
    for slot in (0, 1):
        url = cluster.url(slot)
        poll(lambda u=url: healthz(u) == 200, what=f"replica {slot} /healthz 200",
             timeout=within)
        poll(lambda u=url: 200 <= probe(u) < 300, what=f"replica {slot} taking alerts",
             timeout=within, interval=0.5)
    poll(lambda: cluster.holder() is not None, what="a leader holding a live lease",
         timeout=within)


#: The database's second loopback address: whoever connects to it is partitioned.
PARTITION_HOST = "127.0.0.2"


@contextmanager
def partitioned(server_port: int, host: str = PARTITION_HOST) -> Iterator[None]:
    """Drop every packet to ``host:server_port`` and back on the loopback until the
    block ends: a silent partition (nothing refused, nothing answered) of whoever
    reaches the database by that address, and of nobody else."""
    import subprocess

    rules = [["-d", host, "-p", "tcp", "--dport", str(server_port)],
             ["-s", host, "-p", "tcp", "--sport", str(server_port)]]
    tag = ["-m", "comment", "--comment", "llm-incident-chaos"]
    added = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-w", "-I", "INPUT", "-i", "lo", *rule, *tag,
                            "-j", "DROP"], check=True, capture_output=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-w", "-D", "INPUT", "-i", "lo", *rule, *tag,
                            "-j", "DROP"], check=False, capture_output=True)


def require_iptables() -> None:
    """A partition needs iptables and root (CI runs as root; tests/run.sh installs it)."""
    import shutil
    import subprocess

    ok = shutil.which("iptables") is not None and os.geteuid() == 0 and subprocess.run(
        ["iptables", "-w", "-L", "INPUT", "-n"], capture_output=True,
        check=False).returncode == 0
    if not ok:
        message = "the partition test needs iptables and root (Debian package iptables)"
        if os.environ.get("LLM_INCIDENT_REQUIRE_INTEGRATION") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
