#!/usr/bin/env bash
# The project's one test command (the README quotes it, .ci/run calls it).
# It installs what the tests need on a fresh machine, then runs the linter, the
# import contracts and every test tier. Integration tests never skip here.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
# The image tests (tests/deploy): podman builds and runs the Dockerfile; debootstrap
# makes the Debian base image, since no registry serves base images here.
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
# The LiteLLM hook counts per-customer limits in the proxy's shared Redis (a real one in the tests).
command -v redis-server >/dev/null || need_apt+=(redis-server)
# The store suite and the replica tests run on a real Postgres, which the tests start
# themselves (initdb and pg_ctl as the package's postgres user) and stop.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
# The replica chaos tests run one replica on a shifted clock (LD_PRELOAD libfaketime).
compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || need_apt+=(faketime libfaketime)
# ...and cut one replica off from Postgres on the loopback (iptables DROP rules).
command -v iptables >/dev/null || need_apt+=(iptables)
# Headless Chromium for the web console's browser tests (driven by playwright).
command -v chromium >/dev/null || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

python3 -m pip install -q -e '.[test,litellm]'

echo "== ruff"; python3 -m ruff check bot bot_litellm_hook actions drills tests bench
echo "== types"; python3 -m mypy
echo "== import contracts"; lint-imports
echo "== pytest"
export LLM_INCIDENT_REQUIRE_INTEGRATION=1
python3 -m pytest "$@"
