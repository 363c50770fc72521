"""The policy-file driver: reading, validating and atomically rewriting the file."""

from __future__ import annotations

import asyncio
import errno
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from freezegun import freeze_time

from actions.base import ServingDriver
from actions.drivers import policy_file
from actions.drivers.policy_file import PolicyFileDriver
from actions.policy import ServingPolicy
from bot.base.errors import DriverError

POLICY = """\
version: 1
routes:
  zeta:
    enabled: true
    max_output_tokens: 512
    traffic: {zeta-large: 0.9, zeta-small: 0.1}
  alpha:
    enabled: true
    max_concurrency: 16
updated_at: 2026-11-29T10:00:00Z
updated_by: someone
"""


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def run(coro):
    return asyncio.run(coro)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_is_a_serving_driver(policy_path: Path) -> None:
    assert isinstance(PolicyFileDriver(policy_path), ServingDriver)


def test_read_parses_the_file(policy_path: Path) -> None:
    policy = run(PolicyFileDriver(policy_path).read())
    assert list(policy.routes) == ["zeta", "alpha"]
    assert policy.get("zeta", "max_output_tokens") == 512
    assert policy.get("alpha", "max_concurrency") == 16
    assert policy.updated_at == datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def test_missing_file_names_the_path_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(DriverError) as exc:
        run(PolicyFileDriver(path).read())
    assert str(path) in exc.value.message
    assert exc.value.hint


def test_create_missing_reads_empty_and_write_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "new.yaml"
    driver = PolicyFileDriver(path, create_missing=True, add_routes=True)
    assert run(driver.read()) == ServingPolicy()
    run(driver.write({"chat": {"max_output_tokens": 256}}, reason="INC-1", action="cap"))
    assert run(PolicyFileDriver(path).read()).get("chat", "max_output_tokens") == 256
    assert not driver.prev_path.exists()  # nothing to keep on the first write


def test_a_write_never_adds_a_route_the_file_does_not_list(policy_path: Path) -> None:
    before = policy_path.read_bytes()
    driver = PolicyFileDriver(policy_path)
    with pytest.raises(DriverError, match="route 'ghost' is not served") as exc:
        run(driver.write({"ghost": {"max_output_tokens": 8}}, reason="INC-1", action="cap"))
    assert "nothing was written" in (exc.value.hint or "")
    assert policy_path.read_bytes() == before


def test_unreadable_file_is_a_driver_error(policy_path: Path, monkeypatch) -> None:
    # The tests may run as root, for whom chmod 000 does not stop reads.
    def denied(self: Path) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DriverError, match="not readable") as exc:
        run(PolicyFileDriver(policy_path).read())
    assert str(policy_path) in exc.value.message


def test_corrupt_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nroutes:\n  chat: {enabled: true\n  other: 1\n")
    with pytest.raises(DriverError, match="corrupt YAML") as exc:
        run(PolicyFileDriver(path).read())
    assert f"{path}:" in exc.value.message
    line = int(exc.value.message.split(f"{path}:")[1].split(":")[0])
    assert 3 <= line <= 5


def test_invalid_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    text = POLICY.replace("max_concurrency: 16", "max_concurrency: -3")
    path.write_text(text)
    line = text.splitlines().index("    max_concurrency: -3") + 1
    with pytest.raises(DriverError) as exc:
        run(PolicyFileDriver(path).read())
    assert f"{path}:{line}: routes.alpha.max_concurrency" in exc.value.message


def test_unknown_key_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nroutes:\n  chat:\n    max_tokens: 5\n")
    with pytest.raises(DriverError, match=r":4: routes\.chat\.max_tokens"):
        run(PolicyFileDriver(path).read())


@pytest.mark.parametrize(
    ("text", "needle"),
    [("", "is empty"), ("- a\n- b\n", "must be a mapping"), ("version: 2\n", "version")],
)
def test_other_bad_documents(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(DriverError, match=needle):
        run(PolicyFileDriver(path).read())


@freeze_time("2026-12-01 08:30:00")
def test_write_sets_values_stamp_and_keeps_order(policy_path: Path) -> None:
    driver = PolicyFileDriver(policy_path)
    run(driver.write({"alpha": {"max_concurrency": 4}}, reason="INC-7 step lower", action="x"))
    doc = yaml.safe_load(policy_path.read_text())
    assert list(doc["routes"]) == ["zeta", "alpha"]
    assert list(doc["routes"]["zeta"]["traffic"]) == ["zeta-large", "zeta-small"]
    assert list(doc) == ["version", "routes", "updated_at", "updated_by"]
    assert doc["routes"]["alpha"]["max_concurrency"] == 4
    assert doc["routes"]["zeta"]["max_output_tokens"] == 512  # untouched routes survive
    policy = run(driver.read())
    assert policy.updated_at == datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    assert policy.updated_by == "INC-7 step lower"


def test_injected_clock_and_actor_fallback(policy_path: Path) -> None:
    stamp = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    driver = PolicyFileDriver(policy_path, actor="drill-bot", clock=lambda: stamp)
    run(driver.write({"zeta": {"enabled": False}}, reason="  ", action="disable_route"))
    policy = run(driver.read())
    assert (policy.updated_at, policy.updated_by) == (stamp, "drill-bot")


def test_write_keeps_previous_version_and_mode(policy_path: Path) -> None:
    os.chmod(policy_path, 0o640)
    driver = PolicyFileDriver(policy_path)
    run(driver.write({"zeta": {"max_output_tokens": 128}}, reason="r", action="a"))
    assert driver.prev_path.read_text() == POLICY
    assert (policy_path.stat().st_mode & 0o777) == 0o640
    run(driver.write({"zeta": {"max_output_tokens": 64}}, reason="r", action="a"))
    prev = yaml.safe_load(driver.prev_path.read_text())
    assert prev["routes"]["zeta"]["max_output_tokens"] == 128
    assert leftovers(policy_path.parent) == []


def test_writing_same_values_twice_is_idempotent(policy_path: Path) -> None:
    driver = PolicyFileDriver(policy_path)
    updates = {"zeta": {"max_output_tokens": 100}, "alpha": {"enabled": False}}
    run(driver.write(updates, reason="once", action="a"))
    first = policy_path.read_bytes()
    run(driver.write(updates, reason="twice", action="a"))
    assert policy_path.read_bytes() == first
    assert run(driver.read()).updated_by == "once"


def test_failed_temp_write_leaves_old_file_intact(policy_path: Path, monkeypatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(policy_file.os, "fsync", no_space)
    driver = PolicyFileDriver(policy_path)
    with pytest.raises(DriverError, match="No space left") as exc:
        run(driver.write({"zeta": {"max_output_tokens": 1}}, reason="r", action="a"))
    assert "still in force" in (exc.value.hint or "")
    assert policy_path.read_text() == POLICY
    assert leftovers(policy_path.parent) == []
    assert not driver.prev_path.exists()


def test_failed_replace_leaves_old_file_intact(policy_path: Path, monkeypatch) -> None:
    real_replace = os.replace

    def refuse_main(src, dst) -> None:
        if Path(dst) == policy_path:
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(policy_file.os, "replace", refuse_main)
    with pytest.raises(DriverError, match="could not replace"):
        run(
            PolicyFileDriver(policy_path).write(
                {"alpha": {"enabled": False}}, reason="r", action="a"
            )
        )
    assert policy_path.read_text() == POLICY
    assert leftovers(policy_path.parent) == []


def test_invalid_update_writes_nothing(policy_path: Path) -> None:
    driver = PolicyFileDriver(policy_path)
    with pytest.raises(DriverError, match=r"routes\.zeta\.traffic"):
        run(driver.write({"zeta": {"traffic": {"a": 0.5}}}, reason="r", action="shift_traffic"))
    assert policy_path.read_text() == POLICY


def test_refuses_to_overwrite_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("routes: [oops\n")
    with pytest.raises(DriverError, match="corrupt YAML"):
        run(PolicyFileDriver(path).write({"a": {"enabled": False}}, reason="r", action="a"))
    assert path.read_text() == "routes: [oops\n"


def test_missing_directory_is_a_driver_error(tmp_path: Path) -> None:
    driver = PolicyFileDriver(tmp_path / "no" / "policy.yaml", create_missing=True)
    with pytest.raises(DriverError, match="does not exist"):
        run(driver.write({"a": {"enabled": False}}, reason="r", action="a"))


def test_concurrent_writers_lose_no_update(policy_path: Path) -> None:
    # Each write is a read-modify-write in its own thread; the flock serialises them.
    async def main() -> None:
        drivers = [PolicyFileDriver(policy_path, add_routes=True) for _ in range(16)]
        await asyncio.gather(
            *(
                d.write({f"r{i}": {"max_output_tokens": i + 1}}, reason=f"w{i}", action="a")
                for i, d in enumerate(drivers)
            )
        )

    run(main())
    policy = run(PolicyFileDriver(policy_path).read())
    assert {f"r{i}" for i in range(16)} <= set(policy.routes)
    assert all(policy.get(f"r{i}", "max_output_tokens") == i + 1 for i in range(16))
    assert leftovers(policy_path.parent) == []


def test_dump_and_parse_round_trip() -> None:
    policy = ServingPolicy.model_validate(yaml.safe_load(POLICY))
    again = policy_file.parse_policy(policy_file.dump_policy(policy), source="mem")
    assert again == policy
