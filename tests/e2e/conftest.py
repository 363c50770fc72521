"""Fixtures for the end-to-end tier; the rig itself is ``e2e.rig``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e.rig import (
    SandboxRig,
)
from integration.services import (
    poll,
)


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """``wait_until(check, what=..., timeout=...)``: poll until truthy, fail at the deadline."""
    return poll


@pytest.fixture(scope="module")
def sandbox_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxRig]:
    with SandboxRig(tmp_path_factory.mktemp("e2e")) as rig:
        yield rig
