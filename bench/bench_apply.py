"""Time per action of plan + guards + apply + record through the policy-file driver.

    python bench/bench_apply.py [--runs 300]

Each iteration goes through the real ``Runner`` (plan with every guard, persist
the run, apply via ``PolicyFileDriver``, read back to verify, record the
mitigation in SQLite) on a temp dir, then reverts untimed so the next
iteration starts from the same policy. Separately it times the policy-file
write alone (read-modify-write with fsync of the file and the directory), and
the revert. Prints median and p99 in milliseconds; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actions.drivers.policy_file import PolicyFileDriver, dump_policy  # noqa: E402
from actions.policy import ServingPolicy  # noqa: E402
from bot.core.runner import Runner  # noqa: E402
from bot.playbook.schema import Guard  # noqa: E402
from bot.store import Store  # noqa: E402

BASE = ServingPolicy.model_validate(
    {
        "routes": {
            "chat": {
                "group": "chat",
                "max_output_tokens": 512,
                "max_concurrency": 16,
                "prompt_version": "v41",
                "traffic": {"chat-large": 0.9, "chat-small": 0.1},
            },
            "chat-small": {"group": "chat", "max_output_tokens": 256, "max_concurrency": 8},
            "spare": {"group": "spare-group", "enabled": False},
            "spare-2": {"group": "spare-group"},
        }
    }
)

ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("cap_output_length", {"route": "chat", "max_output_tokens": 256}),
    ("lower_concurrency", {"route": "chat", "factor": 0.5}),
    ("disable_route", {"route": "chat-small"}),
    ("enable_route", {"route": "spare"}),
    ("fallback", {"route": "chat", "to": "chat-small"}),
    ("rollback_prompt", {"route": "chat", "prompt_version": "v40"}),
    ("shift_traffic", {"route": "chat", "weights": {"chat-large": 0.5, "chat-small": 0.5}}),
]


def ms(samples_ns: list[int]) -> str:
    data = [s / 1e6 for s in samples_ns]
    p99 = statistics.quantiles(data, n=100)[98] if len(data) >= 2 else data[0]
    return f"median {statistics.median(data):7.2f} ms   p99 {p99:7.2f} ms"


async def timed(fn: Callable[[], Awaitable[Any]]) -> int:
    start = time.perf_counter_ns()
    await fn()
    return time.perf_counter_ns() - start


async def bench_runner(workdir: Path, runs: int) -> None:
    policy_path = workdir / "policy.yaml"
    policy_path.write_bytes(dump_policy(BASE))
    driver = PolicyFileDriver(policy_path)
    store = Store(workdir / "bench.db")
    runner = Runner(store, {"default": driver}, None)
    guard = Guard(approval="none")
    print(f"plan + guards + apply + verify + record (Runner, SQLite WAL, {runs} runs each)")
    reverts: list[int] = []
    try:
        for action, args in ACTIONS:
            samples: list[int] = []
            for _ in range(runs):
                start = time.perf_counter_ns()
                run = await runner.plan(
                    incident_id=None,
                    playbook_id=None,
                    step_id=None,
                    action=action,
                    target="default",
                    args=args,
                    guard=guard,
                    verify_query=None,
                    requested_by="bench",
                )
                run = await runner.apply(run.id, actor="bench")
                samples.append(time.perf_counter_ns() - start)
                if run.state != "applied":
                    raise SystemExit(f"{action}: run ended {run.state}: {run.error}")
                rid = run.id
                reverts.append(
                    await timed(lambda rid=rid: runner.revert(rid, actor="bench", reason="bench"))
                )
            print(f"  {action:<18} {ms(samples)}")
        print(f"  {'revert (any)':<18} {ms(reverts)}")
    finally:
        store.close()


async def bench_write(workdir: Path, runs: int) -> None:
    policy_path = workdir / "write.yaml"
    policy_path.write_bytes(dump_policy(BASE))
    driver = PolicyFileDriver(policy_path)
    samples: list[int] = []
    for i in range(runs):
        # Alternate values: an unchanged write is skipped and would time nothing.
        updates = {"chat": {"max_output_tokens": 256 if i % 2 else 128}}
        samples.append(
            await timed(lambda u=updates: driver.write(u, reason="bench", action="bench"))
        )
    reads = [await timed(driver.read) for _ in range(runs)]
    print(f"policy-file driver alone ({runs} runs)")
    print(f"  {'write (fsync)':<18} {ms(samples)}")
    print(f"  {'read':<18} {ms(reads)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="iterations per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as tmp:
        asyncio.run(bench_runner(Path(tmp), args.runs))
        asyncio.run(bench_write(Path(tmp), args.runs))


if __name__ == "__main__":
    main()
