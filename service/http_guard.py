"""ASGI middlewares in front of the generation routes, outermost first: access, request checks, admission.

  ApiKeyAuth      with DCGAN_API_KEY set, the generation routes and /info want `Authorization: Bearer <key>`
  RequestGuard    reads the whole body within a deadline (408 otherwise), checks method, content type,
                  size and fields (4xx), then runs the request, telling it how to learn that its client left
  AdmissionLimit  counts a request only once its body is in: at most DCGAN_MAX_INFLIGHT in progress
                  (429 past it), and none admitted while the server drains (503 + Retry-After)

BentoML's own limit (traffic.max_concurrency) answers 429 without Retry-After and counts a request
before its body arrives, so slow clients could hold every slot; its request parsing accepts text/plain
and form bodies and turns a malformed multipart body into a 500. These close those gaps.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.drain import DRAIN
from service.schema import error_response, request_from_json, validation_error_response

RETRY_AFTER_S = 1  # a batch on the committed model takes well under a second; come back then
# For the request being handled: `await CLIENT_LEFT.get()()` returns once its client has disconnected. The entry
# awaits it only while a request waits for the generator (service/coalesce.py), so a request whose client left is
# dropped before its latents reach the generator, and a request that does not wait costs no extra task.
CLIENT_LEFT: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar("dcgan_client_left", default=None)
# For the request being handled: (method, its If-None-Match header or None), for service/responses.py's not_modified.
CONDITIONAL: ContextVar[tuple[str, str | None]] = ContextVar("dcgan_conditional", default=("POST", None))


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on `paths` (constant-time comparison); probes and /metrics stay open."""

    def __init__(self, app: ASGIApp, key: str, paths: frozenset[str]) -> None:
        self.app, self.key, self.paths = app, key.encode("utf-8"), paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.key or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        given = Headers(scope=scope).get("authorization", "")
        scheme, _, token = given.partition(" ")
        # Header values arrive as latin-1 text: back to their bytes, compared with the key's UTF-8 bytes.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.key):
            why = "missing Authorization header" if not given else "wrong API key or scheme"
            response = error_response(
                401, f"{why}: send `Authorization: Bearer <key>` (DCGAN_API_KEY)", headers={"WWW-Authenticate": "Bearer"}
            )
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class RequestGuard:
    """Generation routes take a small JSON object that validates against the route's request model (POST) or a
    query string (GET/HEAD, validated by its route); anything else is a 4xx here. A valid body is replayed to
    BentoML unchanged, with CLIENT_LEFT set for it. `raw_bodies` paths (path -> most bytes) take POST bodies that
    their handler parses itself (the Open Inference Protocol's JSON or binary tensors): read within the same
    deadline and size limit, not checked here."""

    cancelled = 0  # requests whose client left before its body was in (this worker), shown at /info

    def __init__(
        self,
        app: ASGIApp,
        post_models: Mapping[str, type[BaseModel]],
        get_paths: frozenset[str],
        max_body: int,
        body_timeout_s: float,
        raw_bodies: Mapping[str, int] | None = None,
    ) -> None:
        self.app, self.post_models, self.get_paths = app, post_models, get_paths
        self.max_body, self.body_timeout_s = max_body, body_timeout_s
        self.raw_bodies = dict(raw_bodies or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or (path not in self.post_models and path not in self.raw_bodies):
            return await self.app(scope, receive, send)
        method = scope["method"]
        readable = method in ("GET", "HEAD") and path in self.get_paths
        raw = path in self.raw_bodies
        if method != "POST" and not readable:
            allow = "GET, HEAD, POST" if path in self.get_paths else "POST"
            refusal = error_response(405, f"method {method} not allowed on {path}; use {allow}", headers={"Allow": allow})
            return await refusal(scope, receive, send)
        try:
            async with asyncio.timeout(self.body_timeout_s):
                limit = self.raw_bodies.get(path, self.max_body)
                rejection, body = await self._read_body(scope, receive, check_type=not (readable or raw), max_body=limit)
        except TimeoutError:
            rejection = error_response(
                408, f"the request body did not arrive within {self.body_timeout_s:g} s", headers={"Connection": "close"}
            )
        if rejection is None and not (readable or raw):
            model = self.post_models[path]
            try:
                request_from_json(body, model)
            except ValidationError as e:
                rejection = validation_error_response(e, model)
        if rejection is not None:
            return await rejection(scope, receive, send)
        await self._run_with_body(scope, body, receive, send)

    async def _run_with_body(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Run the app with the body replayed, CLIENT_LEFT (costs nothing unless awaited) and CONDITIONAL set for the handler."""

        async def client_left() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the body is consumed; what is left is the disconnect message

        token = CLIENT_LEFT.set(client_left)
        conditional = CONDITIONAL.set((scope["method"], Headers(scope=scope).get("if-none-match")))
        try:
            await self.app(scope, replay, send)
        finally:
            CLIENT_LEFT.reset(token)
            CONDITIONAL.reset(conditional)

    async def _read_body(self, scope: Scope, receive: Receive, check_type: bool, max_body: int):
        """(rejection or None, body). Checks the content type and size before and while reading."""
        headers = Headers(scope=scope)
        content_type = headers.get("content-type")
        # No Content-Type at all is read as JSON (as BentoML does); a different one is refused.
        if check_type and content_type is not None and content_type.split(";")[0].strip().lower() != "application/json":
            return error_response(415, f"content type must be application/json, got {content_type!r}"), b""
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            return error_response(413, f"body must be at most {max_body} bytes, Content-Length is {length}"), b""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                RequestGuard.cancelled += 1
                return error_response(400, "client disconnected before sending the whole body"), b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_body:
                return error_response(413, f"body must be at most {max_body} bytes"), b""
            chunks.append(chunk)
            if not message.get("more_body", False):
                return None, b"".join(chunks)


class AdmissionLimit:
    """At most `limit` generation requests in progress in this process; the next one gets 429 at once.

    Inside RequestGuard, so a request counts only once its body has been read. While the server drains
    (service/drain.py) nothing new is admitted: 503 + Retry-After, and the client's retry finds another pod.
    """

    def __init__(self, app: ASGIApp, limit: int, paths: frozenset[str]) -> None:
        self.app, self.limit, self.paths = app, limit, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        if DRAIN.draining:
            refusal = error_response(
                503,
                f"server shutting down; retry after {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
            )
            return await refusal(scope, receive, send)
        if DRAIN.inflight >= self.limit:
            busy = error_response(
                429,
                f"server busy: {self.limit} requests already in progress (DCGAN_MAX_INFLIGHT); retry after {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
            return await busy(scope, receive, send)
        DRAIN.inflight += 1  # one event loop per worker: plain counter, no lock
        try:
            await self.app(scope, receive, send)
        finally:
            DRAIN.inflight -= 1
