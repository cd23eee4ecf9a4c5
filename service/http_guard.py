"""ASGI middlewares in front of the generation routes: admission control, then request checks.

BentoML's own limit (traffic.max_concurrency) answers 429 without Retry-After, and its request
parsing accepts text/plain and form bodies and turns a malformed multipart body into a 500; these
two close both gaps.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.schema import error_response, request_from_json, validation_error_response

RETRY_AFTER_S = 1  # a batch on the committed model takes well under a second; come back then


class AdmissionLimit:
    """At most `limit` generation requests in progress in this process; the next one gets 429 at once."""

    def __init__(self, app: ASGIApp, limit: int, paths: frozenset[str]) -> None:
        self.app, self.limit, self.paths = app, limit, paths
        self.inflight = 0  # one event loop per worker: plain counter, no lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        if self.inflight >= self.limit:
            busy = error_response(
                429,
                f"server busy: {self.limit} requests already in progress (DCGAN_MAX_INFLIGHT); retry after {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
            return await busy(scope, receive, send)
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


class RequestGuard:
    """POST routes take a small JSON object that validates against the route's request model; anything else is a 4xx here.

    A valid body is replayed to BentoML unchanged. GET routes validate their own query strings.
    """

    def __init__(self, app: ASGIApp, post_models: Mapping[str, type[BaseModel]], get_paths: frozenset[str], max_body: int) -> None:
        self.app, self.post_models, self.get_paths, self.max_body = app, post_models, get_paths, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in self.post_models:
            return await self.app(scope, receive, send)
        method = scope["method"]
        if method == "GET" and path in self.get_paths:
            return await self.app(scope, receive, send)
        if method != "POST":
            allow = "GET, POST" if path in self.get_paths else "POST"
            return await error_response(405, f"method {method} not allowed on {path}; use {allow}", headers={"Allow": allow})(
                scope, receive, send
            )
        rejection, body = await self._read_body(scope, receive)
        if rejection is None:
            model = self.post_models[path]
            try:
                request_from_json(body, model)
            except ValidationError as e:
                rejection = validation_error_response(e, model)
        if rejection is not None:
            return await rejection(scope, receive, send)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the body is consumed; what is left is the disconnect message

        await self.app(scope, replay, send)

    async def _read_body(self, scope: Scope, receive: Receive):
        """(rejection or None, body). Checks the content type and size before and while reading."""
        headers = Headers(scope=scope)
        content_type = headers.get("content-type")
        # No Content-Type at all is read as JSON (as BentoML does); a different one is refused.
        if content_type is not None and content_type.split(";")[0].strip().lower() != "application/json":
            return error_response(415, f"content type must be application/json, got {content_type!r}"), b""
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return error_response(413, f"body must be at most {self.max_body} bytes, Content-Length is {length}"), b""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return error_response(400, "client disconnected before sending the whole body"), b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return error_response(413, f"body must be at most {self.max_body} bytes"), b""
            chunks.append(chunk)
            if not message.get("more_body", False):
                return None, b"".join(chunks)
