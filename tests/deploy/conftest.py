"""What users install, built once per test session: a wheelhouse (our wheel and every
dependency as wheels) for the fresh-venv tests, and the container image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
BASE_IMAGE = "localhost/llm-incident-base:bookworm"
IMAGE = "localhost/llm-incident:test"
# What never goes into a build (as .dockerignore says for the image). The top-level
# tests/ and bench/ only: playbooks/tests ships.
_ANYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache",
                                   ".hypothesis", "*.db", "*.db-wal", "*.db-shm")
_TOP = {".git", "tests", "bench", "var", "build", "dist", "wheelhouse"}


def IGNORED(directory: str, names: list[str]) -> set[str]:  # noqa: N802 - used as a constant
    top = _TOP.intersection(names) if Path(directory) == ROOT else set()
    return top | _ANYWHERE(directory, names)


def run(argv: list[str], *, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    return proc


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel .``: llm-incident's wheel (built from this tree) and its dependencies."""
    out = tmp_path_factory.mktemp("wheelhouse")
    # From a clean copy of the tree: a stale build/ directory must not leak into the wheel.
    src = tmp_path_factory.mktemp("src") / "llm-incident"
    shutil.copytree(ROOT, src, ignore=IGNORED)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", str(src), "-w", str(out)])
    assert list(out.glob("llm_incident-*.whl")), "no llm-incident wheel was built"
    return out


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    require = shutil.which("podman")
    if require is None:
        pytest.fail("podman is not installed (tests/run.sh installs it)", pytrace=False)
    return run(["podman", *args], timeout=timeout, check=check, env=podman_env())


def ensure_base_image(workdir: Path) -> None:
    """A Debian bookworm image with python3 and venv, made with debootstrap (no registry
    serves base images here); kept in podman's store, so made once per machine."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    rootfs = workdir / "rootfs"
    run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
         "bookworm", str(rootfs)], timeout=900)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout,
                              capture_output=True, text=True, env=podman_env(), timeout=600)
    tar.wait()
    assert imported.returncode == 0, imported.stderr
    shutil.rmtree(rootfs, ignore_errors=True)


@pytest.fixture(scope="session")
def image(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The repository's Dockerfile built on the Debian base, installing from the wheelhouse."""
    work = tmp_path_factory.mktemp("image")
    ensure_base_image(work)
    context = work / "context"
    # What the Dockerfile copies: the tree (minus what .dockerignore drops) and the wheels.
    shutil.copytree(ROOT, context, ignore=IGNORED)
    shutil.copytree(wheelhouse, context / "wheelhouse")
    # docker format: the OCI image format has no HEALTHCHECK.
    podman("build", "--format", "docker", "--build-arg", f"BASE={BASE_IMAGE}", "--runtime", "runc",
           "--network", "none", "-t", IMAGE, str(context), timeout=900)
    return IMAGE
