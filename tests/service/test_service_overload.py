"""Overload: past its limits the service answers 429/503 with Retry-After at once, and serves again when load drops.

One extra server with tiny limits, so a handful of requests is "beyond capacity":
at most 2 requests in progress, 2 images per batch, a 1 ms queueing budget in its generator service
(DCGAN_GENERATOR=service: BentoML's batching sheds what it cannot batch in time). And one serving the
committed default model (its real cost per image) with the default 2 s request deadline, driven far past
saturation: admitted requests finish within about the deadline, the rest are refused at once.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import time

import httpx
import pytest
from helpers import refused

from common.paths import REPO_ROOT as REPO

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run

DEADLINE_S = 2.0  # the default DCGAN_DEADLINE_MS
# The queue bound set out of reach: the deadline alone refuses here, however fast the machine is (at the default
# bound of 1,024 images, a machine doing an image in under 2 ms fills the queue before a request's wait reaches 2 s).
OVERLOAD = {"DCGAN_DEADLINE_MS": str(int(DEADLINE_S * 1000)), "DCGAN_MAX_QUEUED_IMAGES": "100000"}
TIGHT = {"DCGAN_GENERATOR": "service", "DCGAN_MAX_INFLIGHT": "2", "DCGAN_MAX_BATCH": "2", "DCGAN_MAX_LATENCY_MS": "1"}


@pytest.fixture(scope="module")
def tight_url(start_service):
    with start_service(TIGHT) as server:
        yield server.url


def test_requests_beyond_the_inflight_limit_get_429_with_retry_after(tight_url):
    counted = refused(tight_url, "overloaded")

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
    assert refused(tight_url, "overloaded") - counted == statuses[429] + statuses[503], statuses  # each refusal counted


def test_work_beyond_the_latency_budget_is_shed_with_503(tight_url):
    """64 images at 2 per batch cannot finish in 1 ms: the generator sheds the request instead of queueing it."""
    r = httpx.post(f"{tight_url}/sample", json={"seed": 1, "n": 64}, timeout=60)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert "overloaded" in r.json()["error"]
    assert refused(tight_url, "overloaded") > 0


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


@pytest.fixture(scope="module")
def deadline_url(tmp_path_factory):
    from helpers import serve

    with serve(tmp_path_factory.mktemp("overload"), REPO / "artifacts" / "default", OVERLOAD) as server:
        yield server.url


async def _closed_loop(url: str, clients: int, seconds: float, n: int) -> list[tuple[int, float, str | None, str]]:
    """`clients` clients, each sending the next request when the last one is answered (after Retry-After if refused).
    Each result: status, seconds, Retry-After, and the error's text for a refusal."""
    results: list[tuple[int, float, str | None, str]] = []
    end = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient, seed: int) -> None:
        while time.monotonic() < end:
            start = time.monotonic()
            r = await client.post(f"{url}/sample", json={"seed": seed, "n": n})
            error = r.json()["error"] if r.status_code != 200 else ""
            results.append((r.status_code, time.monotonic() - start, r.headers.get("retry-after"), error))
            seed += clients
            if r.status_code == 503:
                await asyncio.sleep(float(r.headers["retry-after"]))

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(client_loop(client, seed) for seed in range(clients)))
    return results


def test_far_past_saturation_admitted_requests_finish_within_the_deadline_and_the_rest_are_refused_at_once(deadline_url):
    """64 closed-loop clients asking for 64 images each: several times what two cores generate in a deadline."""
    counted = refused(deadline_url, "deadline") + refused(deadline_url, "overloaded")
    results = asyncio.run(_closed_loop(deadline_url, clients=64, seconds=5, n=64))
    statuses = collections.Counter(status for status, _, _, _ in results)
    assert set(statuses) == {200, 503}, statuses  # nothing else: no timeout, no 500
    served = sorted(s for status, s, _, _ in results if status == 200)
    assert all(retry == "1" for status, _, retry, _ in results if status == 503)
    # "At once" is the decision, not a timing: refused on arrival, by the queue's expected wait, rather than
    # after waiting in it. Those are most refusals, and they are answered in a fraction of the deadline (its
    # cost is an HTTP round trip on a saturated machine: a few ms to a few hundred), where a refusal from
    # the queue has waited the whole deadline first.
    on_arrival = sorted(s for status, s, _, error in results if status == 503 and "queue ahead would take" in error)
    in_queue = [s for status, s, _, error in results if status == 503 and "waited past its deadline" in error]
    p99 = served[int(0.99 * (len(served) - 1))]
    print(
        f"{statuses}; served p50 {statistics.median(served):.3f} s p99 {p99:.3f} s; "
        f"refused on arrival {len(on_arrival)} (p50 {statistics.median(on_arrival):.3f} s), in the queue {len(in_queue)}"
    )
    assert p99 < 2 * DEADLINE_S, (p99, statuses)
    assert len(on_arrival) + len(in_queue) == statuses[503], statuses
    assert len(on_arrival) > len(in_queue), (len(on_arrival), len(in_queue))
    assert statistics.median(on_arrival) < DEADLINE_S / 2, statistics.median(on_arrival)
    assert all(s >= DEADLINE_S for s in in_queue), in_queue
    # Every 503 counted under its reason: past the deadline (most), or the queue bound (overloaded).
    assert refused(deadline_url, "deadline") + refused(deadline_url, "overloaded") - counted == statuses[503]
    assert refused(deadline_url, "deadline") > 0


def test_after_a_burst_the_next_request_is_served_at_once(deadline_url):
    asyncio.run(_closed_loop(deadline_url, clients=64, seconds=2, n=64))
    start = time.monotonic()
    r = httpx.post(f"{deadline_url}/sample", json={"seed": 7, "n": 1}, timeout=30)
    assert r.status_code == 200 and time.monotonic() - start < 1.0, (r.status_code, time.monotonic() - start)


def test_a_request_whose_client_left_is_dropped_before_the_generator(deadline_url):
    """Clients that give up after 50 ms: their requests are cancelled while they wait, never generated."""
    before = httpx.get(f"{deadline_url}/info", timeout=30).json()["merging"]
    gone_before = refused(deadline_url, "client_gone")

    async def impatient() -> None:
        async with httpx.AsyncClient(timeout=0.05, limits=httpx.Limits(max_connections=64)) as client:

            async def one(seed: int) -> None:
                try:
                    await client.post(f"{deadline_url}/sample", json={"seed": seed, "n": 64})
                except httpx.TimeoutException:
                    pass

            await asyncio.gather(*(one(seed) for seed in range(40)))

    asyncio.run(impatient())
    time.sleep(2)
    after = httpx.get(f"{deadline_url}/info", timeout=30).json()["merging"]
    dropped = after["dropped_disconnected"] - before["dropped_disconnected"]
    served = after["requests"] - before["requests"]
    print(f"40 impatient requests: {dropped} dropped unsent, {served} generated")
    assert dropped > 0 and served < 40, (dropped, served)
    assert refused(deadline_url, "client_gone") - gone_before == dropped  # counted under their reason, as 499s


def test_the_python_client_retries_after_retry_after_until_served(tight_url):
    """dcgan_client under the 429s of a 2-request limit: every call ends in its images, the refusals retried."""
    from concurrent.futures import ThreadPoolExecutor

    from dcgan_client import Client

    client = Client(tight_url, retries=30)
    with ThreadPoolExecutor(24) as pool:
        arrays = list(pool.map(lambda seed: client.sample_array(seed), range(24)))
    assert [a.shape[0] for a in arrays] == [1] * 24
    assert client.stats["retries"] > 0 and client.stats["requests"] == 24 + client.stats["retries"]
