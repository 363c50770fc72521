"""`slo render --source auto --metrics URL` against pages that never end: one that
sends without end (stopped at the size limit, in bounded memory) and one that sends
a byte every 2 s (stopped at the deadline for the whole page, not per read)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# The CLI in a child that reports its own peak memory (KiB) on exit. VmHWM, not
# ru_maxrss: Linux keeps ru_maxrss across fork and exec, so a child of a big pytest
# process would report the parent's size.
MEASURED = ("import runpy, sys\n"
            "try:\n"
            "    runpy.run_module('bot.adapters.cli', run_name='__main__')\n"
            "finally:\n"
            "    hwm = next(l.split()[1] for l in open('/proc/self/status')"
            " if l.startswith('VmHWM:'))\n"
            "    print(f'maxrss_kib={hwm}', file=sys.stderr)\n")


class Page(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # no length: the body ends when the server closes
    stop = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        line = b'vllm:num_requests_running{model_name="m"} 1\n' * 1500  # ~64 KB
        try:
            while not self.stop.is_set():
                if self.path == "/endless":
                    self.wfile.write(line)
                else:  # /trickle
                    self.wfile.write(b"#")
                    self.wfile.flush()
                    self.stop.wait(2)
        except OSError:
            pass  # the client gave up: that is the point

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def page_server() -> Iterator[str]:
    Page.stop.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        Page.stop.set()
        server.shutdown()
        server.server_close()


def render(tmp_path: Path, url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", MEASURED, "slo", "render", "--source", "auto",
                          "--metrics", url, "--out", str(tmp_path / "rules")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return out, time.monotonic() - began


def test_an_endless_page_stops_at_the_size_limit_in_bounded_memory(tmp_path, page_server):
    out, _ = render(tmp_path, f"{page_server}/endless")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "is larger than 32 MB (the limit for a metrics page)" in out.stderr, out.stderr
    peak_mib = int(out.stderr.rsplit("maxrss_kib=", 1)[1].split()[0]) / 1024
    print(f"peak memory reading an endless page: {peak_mib:.0f} MiB")
    # The page is dropped at 32 MB; the interpreter and the bot take ~100 MB of their own.
    assert peak_mib < 400, peak_mib
    assert not (tmp_path / "rules").exists()


def test_a_trickling_page_stops_at_the_deadline_for_the_whole_page(tmp_path, page_server):
    out, took = render(tmp_path, f"{page_server}/trickle")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "did not send its whole page within 15 s" in out.stderr, out.stderr
    # Each read gets a byte within 2 s, so a per-read timeout would never end it.
    print(f"a trickling page gave up after {took:.1f} s")
    assert took < 120, took
