"""The entry's request merging (service/coalesce.py) on a stand-in generator call: an async function we control."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.coalesce import Coalescer, Overloaded


class FakeGenerator:
    """Doubles its input; each call blocks until released, and records the batch sizes it saw."""

    def __init__(self, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def __call__(self, latents: np.ndarray) -> np.ndarray:
        self.sizes.append(len(latents))
        await self.release.wait()
        if self.fail:
            raise RuntimeError("generator broke")
        return latents * 2


def _latents(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.float32).reshape(n, 1)


async def _settle() -> None:
    """Let every ready task run until it blocks (callers queue, merged calls reach the generator)."""
    for _ in range(10):
        await asyncio.sleep(0)


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_waiting_requests_go_out_together_and_get_their_own_rows():
    async def main():
        gen = FakeGenerator()
        merged = Coalescer(gen, max_images=100, max_inflight=1)
        tasks = [asyncio.create_task(merged(_latents(10 * i, 1 + i % 3))) for i in range(6)]
        await _settle()  # all six are queued; the first went out alone
        assert gen.sizes == [1]
        gen.release.set()
        results = await asyncio.gather(*tasks)
        return gen, merged, results

    gen, merged, results = _run(main())
    assert gen.sizes == [1, 2 + 3 + 1 + 2 + 3]  # the other five in one call, in arrival order
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, _latents(10 * i, 1 + i % 3) * 2)
    assert (merged.calls, merged.requests) == (2, 6)


def test_batches_stop_at_max_images_and_a_large_request_goes_alone():
    async def main():
        gen = FakeGenerator()
        gen.release.set()
        merged = Coalescer(gen, max_images=4, max_inflight=1)
        sizes = [1, 3, 2, 2, 6, 1]
        results = await asyncio.gather(*(merged(_latents(0, n)) for n in sizes))
        return gen, sizes, results

    gen, sizes, results = _run(main())
    assert gen.sizes == [1, 3, 4, 6, 1]  # 2+2 fit in 4; 6 is over the cap, so it goes alone
    assert [len(r) for r in results] == sizes


def test_no_merging_while_calls_are_free():
    async def main():
        gen = FakeGenerator()
        merged = Coalescer(gen, max_images=100, max_inflight=3)
        tasks = [asyncio.create_task(merged(_latents(i, 1))) for i in range(3)]
        await _settle()
        sizes = list(gen.sizes)
        gen.release.set()
        await asyncio.gather(*tasks)
        return sizes

    assert _run(main()) == [1, 1, 1]  # three calls in flight at once, none waited


def test_an_error_reaches_every_merged_caller_and_the_next_call_still_goes():
    async def main():
        gen = FakeGenerator(fail=True)
        merged = Coalescer(gen, max_images=100, max_inflight=1)
        tasks = [asyncio.create_task(merged(_latents(i, 1))) for i in range(3)]
        await _settle()
        gen.release.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        gen.fail = False
        after = await merged(_latents(7, 2))
        return outcomes, after

    outcomes, after = _run(main())
    assert all(isinstance(o, RuntimeError) and str(o) == "generator broke" for o in outcomes)
    np.testing.assert_array_equal(after, _latents(7, 2) * 2)


def test_a_caller_that_went_away_does_not_break_the_others():
    async def main():
        gen = FakeGenerator()
        merged = Coalescer(gen, max_images=100, max_inflight=1)
        first = asyncio.create_task(merged(_latents(0, 1)))
        gone = asyncio.create_task(merged(_latents(1, 1)))
        kept = asyncio.create_task(merged(_latents(2, 1)))
        await _settle()
        gone.cancel()  # its client disconnected while it waited
        await _settle()
        gen.release.set()
        return gen, await first, await kept, gone

    gen, first, kept, gone = _run(main())
    assert gen.sizes == [1, 1]  # the cancelled request was dropped from the merged call
    np.testing.assert_array_equal(kept, _latents(2, 1) * 2)
    assert gone.cancelled()


@pytest.mark.parametrize(("max_images", "max_inflight", "deadline_s"), [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0)])
def test_bad_limits_are_refused(max_images, max_inflight, deadline_s):
    with pytest.raises(ValueError, match=">= 1"):
        Coalescer(FakeGenerator(), max_images, max_inflight, deadline_s=deadline_s)


class SlowGenerator:
    """Takes `seconds_per_image` of wall time per image, then doubles its input."""

    def __init__(self, seconds_per_image: float) -> None:
        self.seconds_per_image = seconds_per_image
        self.sizes: list[int] = []

    async def __call__(self, latents: np.ndarray) -> np.ndarray:
        self.sizes.append(len(latents))
        await asyncio.sleep(self.seconds_per_image * len(latents))
        return latents * 2


def test_past_the_deadline_requests_are_refused_at_once_and_the_admitted_finish_within_it():
    """1 ms per image, 0.2 s deadline: of 60 requests of 10 images at once, about 20 fit; the rest are refused immediately."""

    async def main():
        merged = Coalescer(SlowGenerator(0.001), max_images=20, max_inflight=1, deadline_s=0.2)
        await merged(_latents(0, 10))  # one call measures the cost per image

        async def timed(i: int):
            start = time.monotonic()
            try:
                await merged(_latents(i, 10))
                return "served", time.monotonic() - start
            except Overloaded:
                return "refused", time.monotonic() - start

        return merged, await asyncio.gather(*(timed(i) for i in range(60)))

    merged, outcomes = _run(main())
    served = [s for kind, s in outcomes if kind == "served"]
    refused = [s for kind, s in outcomes if kind == "refused"]
    assert 5 <= len(served) <= 30 and len(served) + len(refused) == 60, (len(served), len(refused))
    assert max(served) < 2 * 0.2, max(served)
    assert max(refused) < 0.01, max(refused)  # refused before waiting for anything
    assert merged.refused == len(refused)


def test_the_queue_is_bounded_in_images():
    async def main():
        gen = FakeGenerator()
        merged = Coalescer(gen, max_images=100, max_inflight=1, max_queued_images=5)
        first = asyncio.create_task(merged(_latents(0, 4)))  # goes out at once
        queued = [asyncio.create_task(merged(_latents(i, 2))) for i in range(2)]  # 4 images wait
        await _settle()
        with pytest.raises(Overloaded, match="4 images already queued"):
            await merged(_latents(9, 2))  # 6 > 5
        gen.release.set()
        await asyncio.gather(first, *queued)

    _run(main())


def test_while_the_generator_is_down_new_callers_are_refused_and_waiting_ones_keep_their_turn():
    async def main():
        gen = FakeGenerator()
        merged = Coalescer(gen, max_images=100, max_inflight=1, deadline_s=0.05)
        first = asyncio.create_task(merged(_latents(0, 1)))
        waiting = asyncio.create_task(merged(_latents(1, 1)))
        await _settle()
        merged.generator_down()  # the call in flight found it unreachable and retries
        with pytest.raises(Overloaded, match="restarting"):
            await merged(_latents(2, 1))
        await asyncio.sleep(0.1)  # longer than the deadline: the outage does not count against it
        merged.generator_up()
        gen.release.set()
        return await first, await waiting

    first, waiting = _run(main())
    np.testing.assert_array_equal(waiting, _latents(1, 1) * 2)


def test_a_caller_that_waited_past_its_deadline_is_refused_not_sent_late():
    async def main():
        gen = FakeGenerator()
        merged = Coalescer(gen, max_images=100, max_inflight=1, deadline_s=0.05)
        first = asyncio.create_task(merged(_latents(0, 1)))
        late = asyncio.create_task(merged(_latents(1, 1)))
        await asyncio.sleep(0.1)  # the first call holds the generator past the second's deadline
        gen.release.set()
        await first
        with pytest.raises(Overloaded, match="past its deadline"):
            await late
        return gen

    assert _run(main()).sizes == [1]
