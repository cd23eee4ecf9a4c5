"""Every workaround for BentoML behaviour this service depends on, in one place, each behind the version guard.

Written against bentoml 1.4.40 (the pin in pyproject.toml). Each fix names the upstream file it
patches; docs/bentoml-upstream.md holds a ready-to-file upstream report for each. Changing the pin
means re-reading those files: `check_version()` stops start-up until PATCHED_FOR is updated.

1. bound_batch_wait: cap the adaptive-batching dispatcher's learned wait.
   bentoml/_internal/marshal/dispatcher.py: CorkDispatcher keeps the queued requests waiting while
   `n * (wn + 0.001 + o_a) <= 0.95 * Optimizer.wait` (n queued, wn the newest one's age).
   Optimizer.wait is the mean, over the last 50 batches, of how long each batch's first request sat
   in the queue, refreshed at most every 5 s. Under load that queue time is time spent behind the
   busy model (up to max_latency_ms), not time spent waiting for company, yet afterwards it is
   applied to a lone request on an idle model: after a burst a lone request waited ~1.9 s, and each
   such wait fed the mean again, so it stayed for minutes. max_latency_ms does not cap this wait.
   BentoML exposes no setting for it and builds the dispatcher itself, so the bound is a subclass
   of its Optimizer put in place of the original before any dispatcher is built.

2. release_request_timers: stop per-request timeout timers keeping finished requests alive.
   bentoml/_internal/server/http/traffic.py: TimeoutMiddleware schedules `loop.call_later(timeout,
   ...)` for every request and never cancels it. The timer holds a copy of the request's
   contextvars Context, and through it the request's OpenTelemetry span, so each finished request
   stays in memory for the whole traffic timeout (40 s at the entry). At ~500 requests/s that is
   hundreds of thousands of live objects, and each full garbage collection walks them all:
   measured, every 1-2 s every in-flight request stalled together for 200-450 ms (the p99 of n=1
   load tests). The fix: the timer runs in an empty Context and is cancelled once the request ends.

3. OneLineWhenShedding: bentoml/_internal/server/http_app.py logs a full traceback for every
   request the dispatcher sheds with 503; under overload that buries the log. One line instead.

4. RUNNER_CONNECTION: BentoML's inter-service client replaces its connection pool every 100
   requests or 300 s and closes the old one under requests still using it ("Cannot write to
   closing transport", https://github.com/bentoml/BentoML/issues/4971). Both services run in one
   pod, so there is nothing to rebalance: never replace it.

5. serve_in_either_generator_mode: a bento serves with DCGAN_GENERATOR=service or inprocess, whichever it
   was built with. _bentoml_sdk/service/factory.py: Service.on_load_bento looks every service of the
   running graph up among the services the bento recorded at build time, with a bare `next()`. The graph
   depends on DCGAN_GENERATOR (the in-process default has no "generator" service), so the image of a
   default build, run with the GPU overlay's DCGAN_GENERATOR=service, stopped at start-up with a
   StopIteration traceback. The lookup serves to pin Hugging Face model revisions (this service has
   none: its model is found in the bento's own store either way) and to set `svc.bento`; the fix does
   the same, skipping the pinning for a service the bento did not record.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

import bentoml
from _bentoml_sdk.models import HuggingFaceModel
from _bentoml_sdk.service.factory import Service
from bentoml._internal.marshal import dispatcher
from bentoml._internal.server.http import traffic
from bentoml.exceptions import ServiceUnavailable
from starlette.responses import JSONResponse

PATCHED_FOR = "1.4.40"  # the BentoML files named above were read at this version

# (4) the generator service's `runner_connection`: keep one connection pool for the process's life.
RUNNER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 10.0**9}


def check_version() -> None:
    if bentoml.__version__ != PATCHED_FOR:
        raise RuntimeError(
            f"service/bentoml_fixes.py patches bentoml {PATCHED_FOR}, but bentoml {bentoml.__version__} is "
            "installed: re-read the upstream files it names, then update or drop each fix and PATCHED_FOR"
        )


def bound_batch_wait(max_wait_ms: int) -> None:
    """(1) Cap the dispatcher's learned wait at max_wait_ms in this process; call before the service app is built."""
    check_version()
    cap_s = max_wait_ms / 1000.0

    class BoundedWaitOptimizer(dispatcher.Optimizer):
        def trigger_refresh(self) -> None:
            super().trigger_refresh()
            self.wait = min(self.wait, cap_s)

    dispatcher.Optimizer = BoundedWaitOptimizer  # CorkDispatcher.__init__ looks the name up here


async def _timeout_middleware_call(self, scope, receive, send) -> None:
    """(2) TimeoutMiddleware.__call__ of bentoml 1.4.40, with the timer context-free and cancelled when done."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter, context=contextvars.Context())

    async def _send(message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
            await resp(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def release_request_timers() -> None:
    """(2) Install the fix in this process; call before BentoML builds the service's app."""
    check_version()
    traffic.TimeoutMiddleware.__call__ = _timeout_middleware_call


class OneLineWhenShedding(logging.Filter):
    """(3) A shed request (503) is logged as one warning line, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ServiceUnavailable):
            record.msg, record.args = "shed a request with 503: %s", (exc,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def serve_in_either_generator_mode() -> None:
    """(5) Install the fix in this process; call before BentoML loads the bento (at import of the service)."""
    check_version()
    Service.on_load_bento = _on_load_bento


def _on_load_bento(self, bento) -> None:
    recorded = {info.name: info for info in bento.info.services}
    for svc in self.all_services().values():
        info = recorded.get(svc.name)
        for model, model_info in zip(svc.models, info.models if info else []):
            # Upstream's own step: replace a Hugging Face model's revision with the one in the bento.
            if isinstance(model, HuggingFaceModel):
                model.model_id = model_info.metadata.get("model_id") or model_info.tag.name.replace("--", "/")
                model.revision = model_info.metadata.get("revision", model_info.tag.version)
        svc.bento = bento


def log_shedding_in_one_line() -> None:
    """(3) Install the filter on the logger BentoML's HTTP app reports errors on."""
    logging.getLogger("bentoml._internal.server.http_app").addFilter(OneLineWhenShedding())
