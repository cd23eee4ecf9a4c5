"""Graceful drain on SIGTERM: what Kubernetes sends on every rollout, scale-down and node drain.

`bentoml serve` forwards SIGTERM to every worker at once, and each worker's uvicorn then stops at
once: the generator closes its connections while the entry still has admitted requests waiting on
it, and those fail. Here each worker replaces uvicorn's SIGTERM handler (from its service's
`__init__`, which BentoML runs in the worker's main thread after uvicorn installed its own):

  entry      turns not-ready and refuses new generation requests with 503 + Retry-After at once,
             keeps serving every request it admitted, then hands over to uvicorn's shutdown when
             none is left (or when the drain deadline passes).
  generator  keeps serving until every entry worker of this server has finished its drain (each
             holds a marker file while it runs), then hands over to uvicorn's shutdown.

A second SIGTERM, or the deadline, ends the drain early. DCGAN_DRAIN_TIMEOUT_S (default 15 s) keeps preStop
(5 s in deploy/k8s) + drain + GENERATOR_EXTRA_S + HARD_EXIT_AFTER_S inside Kubernetes' 30 s grace period.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.server_dir import child_of_server, server_dir

logger = logging.getLogger("bentoml.dcgan")
POLL_S = 0.05
HARD_EXIT_AFTER_S = 5.0  # after handing over: uvicorn waits for open connections without a limit of its own
GENERATOR_EXTRA_S = 2.0  # the generator outlives the entries' deadline by this, for their last calls


class DrainState:
    """This worker's view: are we draining, and how many admitted generation requests are still in progress."""

    def __init__(self) -> None:
        self.draining = False
        self.since: float | None = None  # time.monotonic() of the signal
        self.inflight = 0  # admitted generation requests not yet answered (service/api.py counts them)

    def start(self) -> None:
        if not self.draining:
            self.draining, self.since = True, time.monotonic()


DRAIN = DrainState()


def _markers_dir() -> Path:
    """One folder per `bentoml serve` run (service/server_dir.py), in the pod's writable /tmp."""
    return server_dir("drain")


def entries_running(folder: Path) -> list[int]:
    """Pids of this server's entry workers (markers in `folder`) that have not finished draining."""
    pids = [int(p.name.removeprefix("entry-")) for p in folder.glob("entry-*")] if folder.is_dir() else []
    return [pid for pid in pids if child_of_server(pid)]


def _install(drain: Callable[[], Awaitable[None]], what: str) -> None:
    """Route SIGTERM to `drain` (a coroutine function) in this worker, then to the handler it replaced."""
    loop = asyncio.get_running_loop()
    handed_over = signal.getsignal(signal.SIGTERM)  # uvicorn's Server.handle_exit

    def hand_over() -> None:
        if callable(handed_over):
            handed_over(signal.SIGTERM, None)
        else:  # no uvicorn handler (not under `bentoml serve`): exit as the default action would
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        loop.call_later(HARD_EXIT_AFTER_S, _hard_exit, what)

    async def drain_then_exit() -> None:
        try:
            await drain()
        finally:
            hand_over()

    tasks = set()  # a strong reference to the drain task: the loop keeps only weak ones

    def start_drain() -> None:
        task = loop.create_task(drain_then_exit())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_sigterm(signum, frame) -> None:
        if DRAIN.draining:  # a second SIGTERM: stop waiting
            logger.warning("%s: second SIGTERM, shutting down now", what)
            loop.call_soon_threadsafe(hand_over)
            return
        DRAIN.start()
        loop.call_soon_threadsafe(start_drain)

    signal.signal(signal.SIGTERM, on_sigterm)


def _hard_exit(what: str) -> None:
    logger.error("%s: still running %.0f s after shutdown began; exiting", what, HARD_EXIT_AFTER_S)
    os._exit(0)


def install_entry_drain(timeout_s: float) -> None:
    """Entry worker: refuse new work, finish the admitted, then stop; call from the service's __init__."""
    folder = _markers_dir()
    marker = folder / f"entry-{os.getpid()}"
    marker.touch()
    atexit.register(marker.unlink, missing_ok=True)  # also when it ends without a drain (SIGINT, an error)

    async def drain() -> None:
        logger.info("SIGTERM: draining %d request(s) in progress (deadline %.0f s); new requests get 503", DRAIN.inflight, timeout_s)
        deadline = DRAIN.since + timeout_s
        while DRAIN.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        if DRAIN.inflight:
            logger.warning("drain deadline (%.0f s) passed with %d request(s) in progress", timeout_s, DRAIN.inflight)
        else:
            logger.info("drained in %.2f s", time.monotonic() - DRAIN.since)
        marker.unlink(missing_ok=True)

    _install(drain, "entry")


def install_generator_drain(timeout_s: float) -> None:
    """Generator worker: keep serving until this server's entry workers have drained; call from its __init__."""
    folder = _markers_dir()  # now, while the parent is still `bentoml serve`

    async def drain() -> None:
        # A little longer than the entries' deadline, so that their last admitted requests still find it.
        deadline = DRAIN.since + timeout_s + GENERATOR_EXTRA_S
        while entries_running(folder) and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        logger.info("generator: entry drained after %.2f s; stopping", time.monotonic() - DRAIN.since)

    _install(drain, "generator")
