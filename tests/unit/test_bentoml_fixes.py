"""service/bentoml_fixes.py: BentoML's per-request timeout timer no longer outlives the request.

The middleware is driven directly as an ASGI app on a real event loop; what is checked is the
loop's own timer heap after a request has finished.
"""

from __future__ import annotations

import asyncio
import contextvars

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.bentoml_fixes import release_request_timers

REQUEST = contextvars.ContextVar("request")


def _app(delay_s: float):
    async def app(scope, receive, send) -> None:
        await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _serve_one(middleware: TimeoutMiddleware) -> tuple[list[dict], list[asyncio.TimerHandle]]:
    """One request through the middleware; (messages sent, timers still on the loop that reach the request's context)."""

    async def main():
        REQUEST.set("the request's state")  # what a request's context holds (BentoML: its span, trace ids)
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)

        await middleware({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
        loop = asyncio.get_running_loop()
        holding = [h for h in loop._scheduled if not h.cancelled() or REQUEST in (h._context or {})]
        return sent, holding

    return asyncio.run(main())


def test_a_finished_request_leaves_no_timer_holding_its_context():
    release_request_timers()
    sent, holding = _serve_one(TimeoutMiddleware(_app(0), timeout=40))
    assert sent[0]["status"] == 200
    assert holding == []  # unfixed: one live 40 s timer per request, holding the request's context


def test_the_timeout_still_answers_504():
    release_request_timers()
    sent, _ = _serve_one(TimeoutMiddleware(_app(5), timeout=0.05))
    assert sent[0]["status"] == 504
    assert b"0.05 seconds" in sent[1]["body"]


def test_the_installed_bentoml_has_the_code_every_workaround_was_written_against():
    from service.bentoml_fixes import check_internals

    check_internals()  # raises, naming the workaround, on a BentoML whose patched code changed


def test_changed_bentoml_code_stops_start_up_with_one_line_naming_the_workaround(monkeypatch):
    import dataclasses

    import pytest
    from bentoml.exceptions import BentoMLConfigException

    from service import bentoml_fixes

    changed = dataclasses.replace(bentoml_fixes.RELIES[2], sha256="0" * 16)  # as if TimeoutMiddleware had changed
    monkeypatch.setattr(bentoml_fixes, "RELIES", (*bentoml_fixes.RELIES[:2], changed, *bentoml_fixes.RELIES[3:]))
    with pytest.raises(BentoMLConfigException) as raised:
        bentoml_fixes.check_internals()
    message = str(raised.value)
    assert "\n" not in message and "workaround 2 release_request_timers" in message and "TimeoutMiddleware" in message, message
