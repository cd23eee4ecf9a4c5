"""Merge the concurrent generator calls of one entry worker into fewer, larger internal calls, within a deadline.

Why merge: on a CPU, ONNX Runtime costs about the same per image at any batch size, so the price of
an n=1 request is mostly framework: each internal call is an HTTP round trip between the entry and
the generator process, with (de)serialisation on both sides. BentoML's adaptive batching merges
calls only once they reach the generator, after each has paid that price.

How: a call goes out at once when fewer than `max_inflight` calls are in flight; otherwise it
waits, and when a call returns, everything waiting (up to `max_images` images) goes out as one
call. Under light load nothing waits; under heavy load the batches grow with the queue. No timer.

Overload: the queue is bounded in images (past it, Overloaded), and each request has a deadline
(`deadline_s`). A request whose images would not start within the deadline, by the queue ahead of it
and the measured cost per image, is refused at once with PastDeadline; one that still waited past its
deadline is refused when its turn comes rather than sent late. Both answer 503 + Retry-After as they
are (service/errors.py). A caller that goes away (its task cancelled, or `client_left` returned: the
client disconnected) is dropped before its latents reach the generator, with ClientGone. So admitted
requests finish within about the deadline, and the queue never outlives a burst.

Results are split back in order, so each caller gets exactly the rows of its own latents. Rows do
not interact in the model (its BatchNorm layers use running statistics in the exported graph), so
merging changes no image; the generator's own adaptive batching already mixes callers the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from service import metrics
from service.errors import ClientGone, Overloaded, PastDeadline

Call = Callable[[np.ndarray], Awaitable[np.ndarray]]
EWMA_WEIGHT = 0.2  # of each new call in the running cost per image


@dataclass
class _Waiting:
    latents: np.ndarray
    future: asyncio.Future
    deadline: float  # time.monotonic() by which its call must have started
    since: float  # time.monotonic() it joined the queue
    queued: bool = True  # its images still count in the queue (not yet sent, nor cancelled)


class Coalescer:
    """`await coalescer(latents)` (B, nz) -> (B, ...) images, sharing internal calls with concurrent callers."""

    def __init__(
        self,
        call: Call,
        max_images: int,
        max_inflight: int = 2,
        deadline_s: float = float("inf"),
        max_queued_images: int | None = None,
        model: str = "",
    ) -> None:
        if max_images < 1 or max_inflight < 1 or not deadline_s > 0:
            raise ValueError(f"max_images, max_inflight must be >= 1 and deadline_s > 0, got {max_images}, {max_inflight}, {deadline_s}")
        self._call = call
        # This model's series of the queue and call metrics (service/metrics.py).
        self._queued_images_gauge = metrics.QUEUED_IMAGES.labels(model=model)
        self._queued_requests_gauge = metrics.QUEUED_REQUESTS.labels(model=model)
        self._queue_wait = metrics.QUEUE_WAIT.labels(model=model)
        self._call_seconds = metrics.CALL_SECONDS.labels(model=model)
        self._outage_count = metrics.OUTAGES.labels(model=model)
        self.max_images = max_images
        self.max_inflight = max_inflight
        self.deadline_s = deadline_s
        self.max_queued_images = max_queued_images
        self._waiting: deque[_Waiting] = deque()
        self._queued_images = 0
        self._inflight = 0
        self._inflight_images = 0
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones
        self.seconds_per_image = 0.0  # running mean of a call's wall time per image, over the measured calls
        self._measured = 0  # calls in that mean (not those that waited through a generator outage)
        self._outages = 0  # generator outages so far: a call that overlapped one is not measured
        self.calls = 0  # internal calls made
        self.requests = 0  # callers served by them
        self.refused = 0  # callers refused with Overloaded
        self.dropped = 0  # callers gone (cancelled) before their call went out
        # While the generator is unreachable (restarting): new callers are refused at once, and the deadlines of
        # those already waiting are suspended, so that they are served once it is back rather than refused.
        self.unavailable_since: float | None = None

    def generator_down(self) -> None:
        if self.unavailable_since is None:
            self.unavailable_since = time.monotonic()
            self._outages += 1
            self._outage_count.inc()

    def generator_up(self) -> None:
        if self.unavailable_since is not None:
            outage = time.monotonic() - self.unavailable_since
            for item in self._waiting:
                item.deadline += outage
            self.unavailable_since = None

    def expected_wait_s(self, images: int) -> float:
        """How long until `images` more would be answered: the images in flight and queued ahead, then its own, at the
        measured wall time per image of a call. With calls overlapping in the generator that time counts each image's
        share of the other calls too, so under load the estimate errs long, which is the safe side of a deadline."""
        if self._inflight < self.max_inflight and not self._waiting:
            return 0.0
        if not self._measured:  # no cost measured yet: only the bound on queued images applies
            return 0.0
        return (self._inflight_images + self._queued_images + images) * self.seconds_per_image

    async def __call__(self, latents: np.ndarray, client_left: Callable[[], Awaitable[None]] | None = None) -> np.ndarray:
        """The images of `latents`. `client_left`, if given, returns once the caller's client has gone: a caller still
        waiting then is dropped (ClientGone) and its latents never go out."""
        n = len(latents)
        if self.unavailable_since is not None:
            self.refused += 1
            unreachable_s = time.monotonic() - self.unavailable_since
            raise Overloaded(f"server overloaded: the generator is restarting (unreachable for {unreachable_s:.1f} s)")
        if self.max_queued_images is not None and self._waiting and self._queued_images + n > self.max_queued_images:
            self.refused += 1
            raise Overloaded(f"server overloaded: {self._queued_images} images already queued (at most {self.max_queued_images})")
        if self.expected_wait_s(n) > self.deadline_s:
            self.refused += 1
            wait_s = self.expected_wait_s(n)
            raise PastDeadline(f"server overloaded: the queue ahead would take about {wait_s:.1f} s (deadline {self.deadline_s:g} s)")
        now = time.monotonic()
        future = asyncio.get_running_loop().create_future()
        item = _Waiting(latents, future, now + self.deadline_s, now)
        future.add_done_callback(lambda _: self._unqueue(item) if future.cancelled() else None)
        self._waiting.append(item)
        self._queued_images += n
        self._queued_images_gauge.inc(n)
        self._queued_requests_gauge.inc()
        self._send()
        if client_left is None or future.done() or not item.queued:
            return await future  # sent at once (or no way to tell a departure): nothing to watch
        left = asyncio.ensure_future(client_left())
        try:
            await asyncio.wait({future, left}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the caller itself was cancelled (a timeout around it): its request goes nowhere either
            future.cancel()
            raise
        finally:
            left.cancel()
        if not future.done() and item.queued:
            future.cancel()  # _prune drops it before its call goes out
            raise ClientGone("the client disconnected while its request waited for the generator")
        # Answered, or already in a generator call: that call ends first (its answer then goes nowhere), so that
        # nothing counts the request as finished, nor releases its model version, while the call still runs.
        return await future

    def _unqueue(self, item: _Waiting) -> None:
        """Its images no longer count as queued: sent, refused, or its caller gone (wherever it is in the queue)."""
        if item.queued:
            item.queued = False
            self._queued_images -= len(item.latents)
            self._queued_images_gauge.dec(len(item.latents))
            self._queued_requests_gauge.dec()

    def _prune(self) -> None:
        """Drop the callers at the head of the queue that are gone (cancelled) or already past their deadline."""
        now = float("-inf") if self.unavailable_since is not None else time.monotonic()
        while self._waiting and (self._waiting[0].future.cancelled() or now > self._waiting[0].deadline):
            item = self._waiting.popleft()
            self._unqueue(item)
            if item.future.cancelled():
                self.dropped += 1
            else:
                self.refused += 1
                item.future.set_exception(PastDeadline(f"server overloaded: waited past its deadline ({self.deadline_s:g} s) in the queue"))

    def _pop(self) -> _Waiting:
        item = self._waiting.popleft()
        self._unqueue(item)
        self._queue_wait.observe(time.monotonic() - item.since)
        return item

    def _send(self) -> None:
        while self._inflight < self.max_inflight:
            self._prune()
            if not self._waiting:
                return
            batch = [self._pop()]
            images = len(batch[0].latents)
            # A request larger than max_images still goes, alone; others join while they fit.
            while True:
                self._prune()
                if not self._waiting or images + len(self._waiting[0].latents) > self.max_images:
                    break
                batch.append(self._pop())
                images += len(batch[-1].latents)
            self._inflight += 1
            self._inflight_images += images
            task = asyncio.create_task(self._run(batch, images))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Waiting], images: int) -> None:
        started, outages = time.monotonic(), self._outages
        try:
            latents = batch[0].latents if len(batch) == 1 else np.concatenate([item.latents for item in batch])
            result = await self._call(latents)
            self._call_seconds.observe(time.monotonic() - started)
            if self._outages == outages and self.unavailable_since is None:  # one that waited through an outage says nothing
                weight = EWMA_WEIGHT if self._measured else 1.0
                self.seconds_per_image += weight * ((time.monotonic() - started) / images - self.seconds_per_image)
                self._measured += 1
            self.calls += 1
            self.requests += len(batch)
            start = 0
            for item in batch:
                if not item.future.done():  # its caller may have gone (client disconnected)
                    item.future.set_result(result[start : start + len(item.latents)])
                start += len(item.latents)
        except BaseException as e:  # every caller of the merged call gets its error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
            if not isinstance(e, Exception):
                raise
        finally:
            self._inflight -= 1
            self._inflight_images -= images
            self._send()
