"""What `python -m loadtest.run --host URL` tells a user: refusals apart from failures, the capacity under a bound,
open-loop latency that includes queueing, and no project goals.

Real locust and real servers: a `bentoml serve` with small overload limits, and for the open-loop property a
stand-in HTTP server written here that answers one request at a time, slowly (it tests the load generator, not
the service). Nothing asserts on speed: only on counts, on what the report says, and on latency ratios that the
schedule fixes (a queue that grows by one service time per request).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.paths import REPO_ROOT as REPO
from loadtest.response_checks import PNG_BASE64_PREFIX

pytestmark = pytest.mark.slow


DEADLINE_MS = 1500
SERVICE_TIME_S = 0.04  # the stand-in's time per request, one at a time: at most 25 requests/s


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtest.run", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_level_past_capacity_is_refused_not_failed_and_the_capacity_is_found(start_service, tmp_path):
    """16 users at n=16 want 256 images at once; the server queues at most 32, refusing the rest with 503 + Retry-After."""
    out = tmp_path / "report"
    with start_service({"DCGAN_DEADLINE_MS": str(DEADLINE_MS), "DCGAN_MAX_QUEUED_IMAGES": "32"}) as server:
        done = _run(["--host", server.url, "--users", "1,16", "--mix", "16", "--duration", "3", "--warmup", "0", "--out", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    one, sixteen = report["targets"][0]["levels"]
    assert sixteen["refused"] > 0 and sixteen["outcomes"]["refused"]["p99_ms"] is not None
    assert one["failed"] == sixteen["failed"] == 0 and one["ok"] > 0 and sixteen["ok"] > 0
    assert one["refused"] == 0  # one request of 16 images fits in the queue
    # Refused users wait the server's Retry-After (1 s) before sending again: at most one refusal per user per second.
    assert sixteen["refused"] <= 16 * (sixteen["window_s"] + 1)
    # The bound is the server's own deadline, read from its /info.
    assert report["bound"]["p99_ms"] == DEADLINE_MS and "limits.deadline_ms" in report["bound"]["from"]
    (capacity,) = report["capacity"]
    assert capacity["images_per_s"] in (one["images_per_s"], sixteen["images_per_s"])
    assert capacity["p99_ms"] <= DEADLINE_MS
    summary = done.stdout[done.stdout.index("capacity of") :]
    assert summary.startswith(f"capacity of server at {server.url}, n 16, p99 <= 1,500 ms with nothing failed: ")
    assert f"{capacity['images_per_s']:,.0f} images/s" in summary.splitlines()[0]
    # A user's report: the capacity first, the three outcomes, the plot; none of this project's goals.
    md = (out / "report.md").read_text()
    assert md.index("## Capacity") < md.index("## Levels") and "capacity.png" in md
    assert "| refused | refused p99 | failed | failed p99 |" in md
    assert "Goals" not in md and report["goals"] is None and report["ceiling"] is None
    assert (out / "capacity.png").stat().st_size > 0


class _SlowHandler(BaseHTTPRequestHandler):
    """POST /sample answered well-formed after SERVICE_TIME_S, one request at a time; GET /readyz 200, anything else 404."""

    lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/readyz" else 404, b"{}")

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            time.sleep(SERVICE_TIME_S)
        images = [PNG_BASE64_PREFIX + "AAAA"] * request["n"]
        self._answer(200, json.dumps({"seed": request["seed"], "n": request["n"], "images": images}).encode())


@contextmanager
def _slow_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_open_loop_latency_includes_the_queue_that_closed_loop_hides(tmp_path):
    """One user against a server that takes 40 ms a request. Closed loop, the user waits for each answer before
    sending the next, so every request sees 40 ms. Open loop at 50 requests/s, twice what it can serve, the k-th
    request is due at k/50 s but sent only when the one before it is answered, so it waits ever longer; latency from
    when it was due shows that wait. The rate locust achieved is reported beside the target."""
    common = ["--mix", "1", "--duration", "3", "--warmup", "0"]
    with _slow_server() as url:
        closed = _run(["--host", url, "--users", "1", *common, "--out", str(tmp_path / "closed")])
        opened = _run(["--host", url, "--rates", "50", "--open-users", "1", *common, "--out", str(tmp_path / "open")])
    assert closed.returncode == 0 and opened.returncode == 0, closed.stdout + closed.stderr + opened.stdout + opened.stderr
    (closed_lv,) = json.loads((tmp_path / "closed" / "report.json").read_text())["targets"][0]["levels"]
    report = json.loads((tmp_path / "open" / "report.json").read_text())
    (open_lv,) = report["targets"][0]["levels"]
    assert closed_lv["failed"] == open_lv["failed"] == 0 and closed_lv["ok"] > 10 and open_lv["ok"] > 10
    # A 40 ms server answers one user at most 25 times a second: locust sends about half the 50/s asked for.
    assert open_lv["target_rate"] == 50 and open_lv["sent_per_s"] <= 26
    # The queue grows by about 20 ms a request: the open loop's median request waited many service times, the closed
    # loop's none.
    assert open_lv["p50_ms"] > 5 * closed_lv["p50_ms"] and open_lv["p99_ms"] > closed_lv["p99_ms"]
    # Requests never sent have no latency: a level that did not offer its rate is not a capacity.
    (capacity,) = report["capacity"]
    assert capacity["images_per_s"] is None and capacity["short_levels"] == ["50 req/s"]
    assert report["bound"]["p99_ms"] == 2000 and "HTTP 404" in report["bound"]["from"]  # no /info: the default
    md = (tmp_path / "open" / "report.md").read_text()
    assert "| 50 req/s (1 user) |" in md and "open loop" in md
