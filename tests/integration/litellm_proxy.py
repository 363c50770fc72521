"""Run a real LiteLLM proxy for the integration tests, and restart it fast.

Importing the proxy costs 10-20 s of CPU, and the driver's reload in this
LiteLLM version is a restart, so restarting a cold ``litellm --config ...``
per change would make the tier minutes long. Instead a small *launcher*
process imports the proxy once and forks a fresh child per start; the child
runs LiteLLM's own CLI entry (``proxy_cli.run_server``) with ``--config``,
``--host 127.0.0.1`` and ``--port``, so it loads the config from scratch like a
cold start would. Only the module imports are shared.

Launcher protocol on stdin/stdout, one line each: ``start`` -> ``pid N``,
``stop`` -> ``stopped RC``; EOF stops the child and exits.

Run as a script: ``python litellm_proxy.py CONFIG HOST PORT LOGFILE``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time


def _stop(pid: int) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main(config: str, host: str, port: str, logfile: str) -> None:
    from litellm.proxy import proxy_cli  # the slow import, done once

    child: int | None = None
    for line in sys.stdin:
        command = line.strip()
        if command == "start" and child is None:
            child = os.fork()
            if child == 0:
                fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                code = 0
                try:
                    proxy_cli.run_server.main(
                        ["--config", config, "--host", host, "--port", port],
                        standalone_mode=False,
                    )
                except BaseException:  # noqa: BLE001 - the child must never return into the loop
                    import traceback

                    traceback.print_exc()
                    code = 1
                os._exit(code)
            print(f"pid {child}", flush=True)
        elif command == "stop":
            rc = _stop(child) if child is not None else 0
            child = None
            print(f"stopped {rc}", flush=True)
    if child is not None:
        _stop(child)


if __name__ == "__main__":
    main(*sys.argv[1:5])
