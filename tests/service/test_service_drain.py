"""Graceful drain: SIGTERM (every Kubernetes rollout) loses no admitted request and ends the server in time.

A server of its own serving the committed default model (its real cost per image), with a deadline
and queue long enough that nothing sent is refused as overload: what is tested is the drain alone.
The signal comes once the server reports requests in progress, so some are surely admitted however
slow the machine is; every request then ends in a 200 or in the drain's designed refusal.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time

import httpx
import pytest
from helpers import refused

from common.paths import REPO_ROOT as REPO

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run

DRAIN = {"DCGAN_DEADLINE_MS": "120000", "DCGAN_MAX_QUEUED_IMAGES": "100000", "DCGAN_DRAIN_TIMEOUT_S": "15"}
REQUESTS = 40  # of 64 images each: a few seconds of work on two cores


def test_sigterm_finishes_admitted_requests_refuses_new_ones_and_exits(tmp_path):
    from helpers import serve

    with serve(tmp_path, REPO / "artifacts" / "default", DRAIN) as server:
        report = asyncio.run(_sigterm_under_load(server.url, server.process))
        code = server.process.wait(30)
        log = server.log()
    answers, in_progress, readyz, after, exited_s, refusal, draining = report
    assert refusal == 503 and draining >= 1, (refusal, draining)  # dcgan_refused_total{reason="draining"} moved
    statuses = collections.Counter(answer for answer, _ in answers)
    assert set(statuses) <= {"200", "503 server shutting down"}, statuses  # nothing failed, nothing lost
    assert in_progress > 0 and statuses["200"] >= in_progress, (in_progress, statuses)  # every admitted one completed
    assert all(retry == "1" for answer, retry in answers if answer != "200")
    gone = ("ConnectError", "ReadError", "RemoteProtocolError")  # the server has closed: a refused or reset connection
    assert readyz == 503 or readyz in gone, readyz
    for status, retry_after, seconds in after:  # refused at once, or the listener already closed: never a hang
        assert (status == 503 or status in gone) and seconds < 2.0, after
        assert status != 503 or retry_after == "1", after
    assert exited_s < 15 + 5, exited_s  # the drain deadline, plus the shutdown itself
    assert code == 0, log[-3000:]
    assert "drained in" in log and "Traceback" not in log, log[-3000:]
    print(f"{in_progress} in progress at SIGTERM; answers {statuses}; exited after {exited_s:.1f} s")


async def _sigterm_under_load(url: str, process) -> tuple:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:

        async def sample(seed: int) -> tuple[str, str | None]:
            r = await client.post(f"{url}/sample", json={"seed": seed, "n": 64})
            reason = " " + r.json()["error"].split(";")[0] if r.status_code != 200 else ""
            return f"{r.status_code}{reason}", r.headers.get("retry-after")

        requests = [asyncio.create_task(sample(seed)) for seed in range(REQUESTS)]
        in_progress, deadline = 0, time.monotonic() + 60
        async with httpx.AsyncClient(timeout=60) as prober:  # its own connection, not queued behind the load
            while in_progress < REQUESTS // 4 and time.monotonic() < deadline:
                in_progress = (await prober.get(f"{url}/info")).json()["merging"]["requests_in_progress"]
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(timeout=10) as early:  # while the admitted requests still run: refused, and counted
            while time.monotonic() - signalled < 10 and (await early.get(f"{url}/readyz")).status_code == 200:
                await asyncio.sleep(0.01)  # the signal reached the worker once it turns not-ready
            refusal = (await early.post(f"{url}/sample", json={"seed": 999})).status_code
            draining = refused(url, "draining")
        answers = await asyncio.gather(*requests)
        async with httpx.AsyncClient(timeout=10) as late:  # a new client, as a load balancer's next request
            try:
                readyz = (await late.get(f"{url}/readyz")).status_code
            except httpx.TransportError as e:  # refused, or reset as the closing server drops its backlog
                readyz = type(e).__name__
            after = []
            for seed in range(3):
                start = time.monotonic()
                try:
                    r = await late.post(f"{url}/sample", json={"seed": 1000 + seed})
                    after.append((r.status_code, r.headers.get("retry-after"), time.monotonic() - start))
                except httpx.TransportError as e:
                    after.append((type(e).__name__, None, time.monotonic() - start))
        while process.poll() is None and time.monotonic() - signalled < 60:
            await asyncio.sleep(0.05)
        return answers, in_progress, readyz, after, time.monotonic() - signalled, refusal, draining
