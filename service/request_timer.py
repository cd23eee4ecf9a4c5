"""Stop BentoML's per-request timeout timers from keeping every finished request alive for the timeout.

Why (bentoml 1.4.40, bentoml/_internal/server/http/traffic.py): TimeoutMiddleware schedules
`loop.call_later(timeout, ...)` for every request and never cancels it. The timer holds a copy of
the request's contextvars Context, and through it the request's OpenTelemetry span and whatever
the context reaches, so each finished request stays in memory for the whole traffic timeout (40 s
at the entry). At ~500 requests/s that is hundreds of thousands of live objects, and each full
(generation 2) garbage collection walks them all: measured, every 1-2 s every in-flight request
stalled together for 200-450 ms, growing with the heap, which was the p99 of n=1 load tests.

The fix, in the middleware's own terms: the timer runs in an empty Context (it only fails a future)
and is cancelled once the request finishes. It replaces TimeoutMiddleware.__call__ in place, so it
applies to the app BentoML builds later in this process.
"""

from __future__ import annotations

import asyncio
import contextvars

import bentoml
from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

PATCHED_FOR = "1.4.40"  # the middleware read to write this; re-read it before changing the pin


async def _call(self, scope, receive, send) -> None:
    """TimeoutMiddleware.__call__ of bentoml 1.4.40, with the timer context-free and cancelled when done."""
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
    except asyncio.TimeoutError:
        if fut.cancel():
            resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
            await resp(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def release_request_timers() -> None:
    """Install the fix in this process; call before BentoML builds the service's app."""
    if bentoml.__version__ != PATCHED_FOR:
        raise RuntimeError(
            f"service/request_timer.py fixes the TimeoutMiddleware of bentoml {PATCHED_FOR}, but bentoml "
            f"{bentoml.__version__} is installed: re-check that middleware and update or drop the fix"
        )
    traffic.TimeoutMiddleware.__call__ = _call
