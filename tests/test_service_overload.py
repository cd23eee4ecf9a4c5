"""Overload: past its limits the service answers 429/503 with Retry-After at once, and serves again when load drops.

One extra server with tiny limits, so a handful of requests is "beyond capacity":
at most 2 requests in progress, 2 images per batch, a 1 ms queueing budget.
"""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import pytest

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run

TIGHT = {"DCGAN_MAX_INFLIGHT": "2", "DCGAN_MAX_BATCH": "2", "DCGAN_MAX_LATENCY_MS": "1"}


@pytest.fixture(scope="module")
def tight_url(start_service):
    with start_service(TIGHT) as server:
        yield server.url


def test_requests_beyond_the_inflight_limit_get_429_with_retry_after(tight_url):
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
            return await asyncio.gather(*(client.post(f"{tight_url}/sample", json={"seed": i}) for i in range(24)))

    responses = asyncio.run(burst())
    statuses = collections.Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[429] > 0 and statuses[200] > 0, statuses
    for r in responses:
        if r.status_code != 200:
            assert r.headers["retry-after"] == "1"
            assert "retry after" in r.json()["error"]


def test_work_beyond_the_latency_budget_is_shed_with_503(tight_url):
    """64 images at 2 per batch cannot finish in 1 ms: the generator sheds the request instead of queueing it."""
    r = httpx.post(f"{tight_url}/sample", json={"seed": 1, "n": 64}, timeout=60)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert "overloaded" in r.json()["error"]


def test_service_recovers_when_load_drops(tight_url):
    """After a saturating burst, a client that honours Retry-After is served: load shedding leaves nothing stuck."""
    asyncio.run(_saturate(tight_url))
    for seed in range(5):
        assert _post_honouring_retry_after(f"{tight_url}/sample", {"seed": seed}).status_code == 200


async def _saturate(url: str) -> None:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
        await asyncio.gather(*(client.post(f"{url}/sample", json={"seed": i, "n": 64}) for i in range(16)))


def _post_honouring_retry_after(url: str, body: dict, tries: int = 3) -> httpx.Response:
    for _ in range(tries):
        r = httpx.post(url, json=body, timeout=60)
        if r.status_code not in (429, 503):
            return r
        time.sleep(float(r.headers["retry-after"]))
    return r
