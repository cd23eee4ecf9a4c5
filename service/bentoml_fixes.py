"""Every workaround for BentoML behaviour this service depends on, in one place, installed by one call: `install()`.

Written against bentoml 1.4.40. Each fix names the upstream code it patches or relies on, and
`check_internals()` compares that code with what was read then (a hash of its source): on a BentoML
whose internals changed, start-up stops with one line naming the workaround that no longer applies
and what to re-read, whatever the version number says. A release that leaves them alone serves as
is. docs/bentoml-upstream.md holds a ready-to-file upstream report for each.

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
   stays in memory for the whole traffic timeout (40 s at the entry): under load, hundreds of
   thousands of live objects that each full garbage collection walks, stalling every request in
   flight together (docs/performance.md#figures-behind-code-comments). The fix: the timer runs in an
   empty Context and is cancelled once the request ends.

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

6. answer_first: the entry's generation routes skip BentoML's per-request middleware stack.
   _bentoml_sdk/service/factory.py: Service.to_asgi builds the worker's Starlette app: a request to a
   mounted ASGI app (service/api.py, mounted with bentoml.asgi_app) first passes Starlette's error
   middleware, OpenTelemetry's (even with every URL excluded), the traffic timeout (a task and a timer
   per request), BentoML's request context (a Starlette Request per request), the exception
   middleware, the router and the mount. The mounted app needs none of them on its generation routes:
   it answers every error itself, bounds every wait with its own deadline, and has its own metrics. The
   fix returns the same app with those paths dispatched to the mounted app before the stack; every
   other path, the lifespan, and every path while DCGAN_TRACING=1 go through BentoML's app unchanged.
   What it saves per request: docs/performance.md#where-the-time-goes.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import logging
from collections.abc import Container
from dataclasses import dataclass

import bentoml
from _bentoml_sdk.models import HuggingFaceModel
from _bentoml_sdk.service import config
from _bentoml_sdk.service.factory import Service
from bentoml._internal.marshal import dispatcher
from bentoml._internal.server import http_app
from bentoml._internal.server.http import traffic
from bentoml.exceptions import BentoMLConfigException, ServiceUnavailable
from starlette.responses import JSONResponse

READ_AT = "1.4.40"  # the BentoML version whose code the fixes were written against

# (4) the generator service's `runner_connection`: keep one connection pool for the process's life.
RUNNER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 10.0**9}


@dataclass(frozen=True)
class Relies:
    """One piece of BentoML code a workaround patches or relies on, and the hash of its source when it was read."""

    fix: str  # the workaround, as numbered above
    where: str  # the upstream code, for the one-line message
    code: object  # the class or function itself
    sha256: str  # first 16 hex digits of sha256(inspect.getsource(code)) at READ_AT


RELIES = (
    Relies("1 bound_batch_wait", "bentoml/_internal/marshal/dispatcher.py Optimizer", dispatcher.Optimizer, "71fb51d7feb7a91f"),
    Relies(
        "1 bound_batch_wait",
        "bentoml/_internal/marshal/dispatcher.py CorkDispatcher.__init__",
        dispatcher.CorkDispatcher.__init__,
        "5a214027709d1a3d",
    ),
    Relies(
        "2 release_request_timers",
        "bentoml/_internal/server/http/traffic.py TimeoutMiddleware",
        traffic.TimeoutMiddleware,
        "4dab3e6bdd06efc5",
    ),
    Relies("3 log_shedding_in_one_line", "bentoml/_internal/server/http_app.py log_exception", http_app.log_exception, "8e37ab2b4433dff1"),
    Relies(
        "4 RUNNER_CONNECTION", "_bentoml_sdk/service/config.py RunnerConnectionSchema", config.RunnerConnectionSchema, "296e822eb89c5760"
    ),
    Relies(
        "5 serve_in_either_generator_mode",
        "_bentoml_sdk/service/factory.py Service.on_load_bento",
        Service.on_load_bento,
        "a5f74eb7a05d6b1c",
    ),
)


def source_hash(code: object) -> str:
    return hashlib.sha256(inspect.getsource(code).encode()).hexdigest()[:16]


def check_internals() -> None:
    """BentoMLConfigException (one line, no traceback from `bentoml serve`) naming the first workaround whose BentoML
    code differs from what it was written against."""
    for relied in RELIES:
        if source_hash(relied.code) != relied.sha256:
            raise BentoMLConfigException(
                f"bentoml {bentoml.__version__}: workaround {relied.fix} (service/bentoml_fixes.py) no longer applies: "
                f"{relied.where} changed since bentoml {READ_AT}; re-read it, then update or drop the workaround and its hash"
            )


def install(settings, entry: tuple[str, object, Container[str]]) -> None:
    """Check BentoML's internals, then install every workaround in this process (at import of the entry service,
    before BentoML loads the bento, builds a service's app or its dispatcher). `entry`: (the entry service's name,
    its mounted ASGI app, the paths that app answers first)."""
    check_internals()
    bound_batch_wait(settings.max_batch_wait_ms)
    release_request_timers()
    serve_in_either_generator_mode()
    log_shedding_in_one_line()
    if not settings.tracing:  # with tracing on, every request keeps BentoML's OpenTelemetry middleware
        answer_first(*entry)


def bound_batch_wait(max_wait_ms: int) -> None:
    """(1) Cap the dispatcher's learned wait at max_wait_ms in this process; call before the service app is built."""
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


def answer_first(service_name: str, app, paths: Container[str]) -> None:
    """(6) In the ASGI app BentoML builds for the service `service_name`, requests to `paths` go to `app` first."""
    build = Service.to_asgi

    def to_asgi(self, is_main: bool = True):
        built = build(self, is_main)
        if self.name != service_name:
            return built

        async def dispatch(scope, receive, send) -> None:
            if scope["type"] == "http" and scope["path"] in paths:
                return await app(scope, receive, send)
            return await built(scope, receive, send)

        return dispatch

    Service.to_asgi = to_asgi


def log_shedding_in_one_line() -> None:
    """(3) Install the filter on the logger BentoML's HTTP app reports errors on."""
    logging.getLogger(http_app.__name__).addFilter(OneLineWhenShedding())
