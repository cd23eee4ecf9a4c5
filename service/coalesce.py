"""Merge the concurrent generator calls of one entry worker into fewer, larger internal calls.

Why: on a CPU, ONNX Runtime costs about the same per image at any batch size, so the price of an
n=1 request is mostly framework: each internal call is an HTTP round trip between the entry and
the generator process, with (de)serialisation on both sides. BentoML's adaptive batching merges
calls only once they reach the generator, after each has paid that price.

How: a call goes out at once when fewer than `max_inflight` calls are in flight; otherwise it
waits, and when a call returns, everything waiting (up to `max_images` images) goes out as one
call. Under light load nothing waits; under heavy load the batches grow with the queue. No timer.

Results are split back in order, so each caller gets exactly the rows of its own latents. Rows do
not interact in the model (its BatchNorm layers use running statistics in the exported graph), so
merging changes no image; the generator's own adaptive batching already mixes callers the same way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

Call = Callable[[np.ndarray], Awaitable[np.ndarray]]


class Coalescer:
    """`await coalescer(latents)` (B, nz) -> (B, ...) images, sharing internal calls with concurrent callers."""

    def __init__(self, call: Call, max_images: int, max_inflight: int = 2) -> None:
        if max_images < 1 or max_inflight < 1:
            raise ValueError(f"max_images and max_inflight must be >= 1, got {max_images}, {max_inflight}")
        self._call = call
        self.max_images = max_images
        self.max_inflight = max_inflight
        self._waiting: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._inflight = 0
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones
        self.calls = 0  # internal calls made
        self.requests = 0  # callers served by them

    async def __call__(self, latents: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((latents, future))
        self._send()
        return await future

    def _send(self) -> None:
        while self._waiting and self._inflight < self.max_inflight:
            batch = [self._waiting.popleft()]
            images = len(batch[0][0])
            # A request larger than max_images still goes, alone; others join while they fit.
            while self._waiting and images + len(self._waiting[0][0]) <= self.max_images:
                batch.append(self._waiting.popleft())
                images += len(batch[-1][0])
            batch = [(latents, future) for latents, future in batch if not future.cancelled()]
            if not batch:
                continue
            self._inflight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        try:
            latents = batch[0][0] if len(batch) == 1 else np.concatenate([latents for latents, _ in batch])
            images = await self._call(latents)
            self.calls += 1
            self.requests += len(batch)
            start = 0
            for part, future in batch:
                if not future.done():  # its caller may have gone (client disconnected)
                    future.set_result(images[start : start + len(part)])
                start += len(part)
        except BaseException as e:  # every caller of the merged call gets its error
            for _, future in batch:
                if not future.done():
                    future.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
            if not isinstance(e, Exception):
                raise
        finally:
            self._inflight -= 1
            self._send()
