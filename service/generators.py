"""Where the entry's generator calls go: two small implementations of one interface.

    describe() -> dict       the model tag, manifest, provider, golden check, batching (what /info shows)
    generate(latents)        (B, nz) float32 -> (B, H, W, C) uint8, awaited by the coalescer (service/coalesce.py)
    ready() / alive()        the probes' view of the generator

InProcess (DCGAN_GENERATOR=inprocess, the default) runs ONNX Runtime in this worker, in a thread beside the event
loop: no second process and no internal HTTP call per batch, the cheaper path on a CPU. Remote
(DCGAN_GENERATOR=service) calls the generator service (service/generator.py), a process of its own that BentoML
batches across entry workers (a GPU shared by several entry workers). Each remote call absorbs BentoML's
pooled-connection resets (it is idempotent), waits out a generator restart, and turns its overload into 503.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import numpy as np
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from service.coalesce import Coalescer
from service.errors import Overloaded
from service.model_engine import Engine

logger = logging.getLogger("bentoml.dcgan")
# A generator call that cannot connect is sent again (it is idempotent), after a growing pause, for up to
# DCGAN_GENERATOR_RESTART_WAIT_S: a pooled connection reset under load (BentoML #4971) heals at once, a
# generator worker that crashed is back in seconds (BentoML restarts it) and its callers still get their images.
RETRY_PAUSE_S = (0.05, 0.1, 0.2, 0.5, 1.0)
READY_TIMEOUT_S = 2.0  # the generator's answer to a readiness probe; the manifests' probes time out at 3 s


class InProcess:
    """The model in this worker: an Engine (service/model_engine.py) called from `calls` threads."""

    def __init__(self, engine: Engine, calls: int, batching: dict) -> None:
        self.engine = engine
        # ONNX Runtime releases the GIL: its calls run in these threads while the loop serves HTTP and encodes images.
        self._threads = ThreadPoolExecutor(calls, thread_name_prefix="onnxruntime")
        self._described = engine.describe(batching)

    async def describe(self) -> dict:
        return self._described

    async def generate(self, latents: np.ndarray) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._threads, self.engine.generate, latents)

    async def ready(self) -> bool:
        return True  # the engine loaded, warmed up and passed its golden check before this worker took a request

    async def alive(self) -> bool:
        return True

    def bind(self, coalescer: Coalescer) -> None:
        """Nothing to tell the coalescer: a thread in this process does not go down on its own."""

    def close(self) -> None:
        """Release the ONNX Runtime session (a version swapped out, once its last admitted request is answered)."""
        self.engine.publish(serving=False)
        self._threads.shutdown(wait=False)
        self.engine = None  # the session goes with the last reference


class Remote:
    """The generator service (a BentoML dependency proxy), with retries through its restarts."""

    def __init__(self, proxy, restart_wait_s: float) -> None:
        self._proxy = proxy
        self._restart_wait_s = restart_wait_s
        self._described: dict | None = None  # the generator's describe(), fetched once
        self._seen = time.monotonic()  # when the generator last answered (start-up counts as an answer)
        self._merged: Coalescer | None = None

    def bind(self, coalescer: Coalescer) -> None:
        """The coalescer to tell when the generator goes down (refuse new work) and comes back."""
        self._merged = coalescer

    def close(self) -> None:
        """Nothing to release here: the generator service holds the session (and it does not swap versions)."""

    async def describe(self) -> dict:
        if self._described is None:
            self._described = await self._proxy.to_async.describe()
        return self._described

    async def ready(self) -> bool:
        """Asked on every probe, with a short timeout: while a generator worker restarts its listening socket still
        accepts connections, and an unbounded call would hang the probe instead of failing it."""
        try:
            self._described = await asyncio.wait_for(self._proxy.to_async.describe(), READY_TIMEOUT_S)
        except (aiohttp.ClientError, BentoMLException, TimeoutError):
            return False
        self._seen = time.monotonic()
        if self._merged is not None:
            self._merged.generator_up()  # it answers: new requests may queue again
        return True

    async def alive(self) -> bool:
        """Alive unless the generator has not answered for longer than DCGAN_GENERATOR_RESTART_WAIT_S.

        Outside a container BentoML restarts a dead generator worker within seconds. Inside one (the image sets
        BENTOML_CONTAINERIZED) it does not, and only a restart of the container helps: /livez turns 503, and the
        liveness probe restarts the pod instead of leaving it up and never ready.
        """
        return time.monotonic() - self._seen < self._restart_wait_s or await self.ready()

    async def generate(self, latents: np.ndarray) -> np.ndarray:
        merged = self._merged
        failed_at = None  # this call's first connection failure
        try:
            for attempt in itertools.count():
                try:
                    images = await self._proxy.to_async.generate(latents)
                    self._seen = time.monotonic()
                    return images
                except ServiceUnavailable:
                    raise Overloaded("generator overloaded: the request could not be batched within its latency budget") from None
                except TimeoutError:
                    raise Overloaded("generator did not answer in time") from None
                except aiohttp.ClientConnectionError as e:
                    now = time.monotonic()
                    failed_at = failed_at or now
                    if attempt >= 1 and merged is not None:  # twice in a row: down, not a lone pooled-connection reset
                        merged.generator_down()
                    # The wait counts from the outage's start, shared by the calls that queued behind it.
                    began = min(failed_at, (merged.unavailable_since if merged else None) or failed_at)
                    if now - began >= self._restart_wait_s:
                        raise Overloaded(f"generator unreachable for {now - began:.0f} s ({type(e).__name__})") from None
                    if attempt % 20 == 0:
                        logger.warning("generator unreachable (%s: %s); retrying for up to %d s", type(e).__name__, e, self._restart_wait_s)
                    await asyncio.sleep(RETRY_PAUSE_S[min(attempt, len(RETRY_PAUSE_S) - 1)])
        finally:
            # Answered, refused or given up: either way new requests are judged afresh (a call still failing marks it
            # down again), so the entry can never stay refusing with nothing left to clear the mark.
            if merged is not None:
                merged.generator_up()
