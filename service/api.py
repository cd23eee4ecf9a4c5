"""The request path: one ASGI app that answers every route of the service except BentoML's probes.

A generation request (service/routes.py, and the Open Inference Protocol's infer) passes each step once, as
arguments, in one method (`Api._generate`):

    request id    the client's X-Request-ID when valid, else a new one; on the response and on its log lines
    API key       with DCGAN_API_KEY set: `Authorization: Bearer <key>` (401)
    method        POST with a JSON body, or GET/HEAD with the fields in the query string (405)
    body          read within DCGAN_BODY_TIMEOUT_S (408), bounded (413), JSON only (415)
    parse         validated once into the route's request model (400/422 naming each field)
    model         the request's `model` (the v2 routes: the path's name and version), else the default: the loaded
                  version that answers it, held until the answer even if a swap happens meanwhile (404 unknown)
    admission     none while draining (503), at most DCGAN_MAX_INFLIGHT in progress per model (429); counted only once
                  the body is in, so slow or bad clients never hold a place
    conditional   If-None-Match against the response's ETag: 304 (GET/HEAD) or 412 (POST), without the model
    generate      latents -> a generator call shared with the model's concurrent requests (service/coalesce.py),
                  dropped if the client leaves while it waits (499), refused past its deadline or the queue bound (503)
    encode        the route's encoder; ETag and immutable Cache-Control on every success

Every error is an HttpError that carries its status (service/errors.py), raised where it is found and answered as
it is. Each request is counted in the metrics under its route from the table, or under "other", and its model
(service/metrics.py). Everything else (/info, the page, /docs and its OpenAPI document, /metrics, the v2 metadata,
health, repository and model-control routes, 404s) is a small Starlette app behind it (`Api.pages`), with the same
request id, metrics and access line. The models themselves are service/model_set.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import json
import logging
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from contract.latents import LATENTS, latents_for_seed
from service import logs, metrics, model_set, v2
from service.drain import DRAIN
from service.errors import (
    BadRequest,
    BodyTimeout,
    Busy,
    Conflict,
    Draining,
    Forbidden,
    HttpError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorised,
    Unprocessable,
    UnsupportedMediaType,
)
from service.model_set import ModelSet, Version
from service.openapi import openapi_document
from service.responses import CACHE_CONTROL, etag, not_modified
from service.routes import GENERATION_METHODS, ROUTES
from service.routes import Route as GenerationRoute
from service.schema import FORMATS, MAX_STEPS, request_from_fields, request_from_json, request_from_query
from service.settings import ServiceSettings

logger = logging.getLogger("bentoml.dcgan")
MAX_BODY_BYTES = 4096  # the largest valid body is ~80 bytes; pretty-printed JSON still fits
REQUEST_ID_HEADER = b"x-request-id"
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # as proxies and tracing systems generate them
PAGE_DIR = Path(__file__).parent / "page"
# BentoML's Swagger UI page and its assets: it loads ./static_content/ and ./docs.json, so it works from /docs.
SWAGGER_PAGE = importlib.resources.files("_bentoml_impl.server") / "main-openapi.html"
SWAGGER_ASSETS = importlib.resources.files("bentoml._internal.server") / "static_content"
# The metrics' route label of the paths that are not generation routes: a fixed set, every other path is "other".
PAGE_LABELS = ("/info", "/metrics", "/docs", "/docs.json", "/", "/ui", "/v2")
REFUSAL_KEY = "dcgan.refusal"  # where the pages app notes a refusal's reason in the request's scope


class GenerationPaths:
    """`path in GENERATION_PATHS`: the paths the generation path answers (the route table's, and v2 infer of any
    model and version); BentoML's middleware is skipped for them (service/bentoml_fixes.py, 6)."""

    def __contains__(self, path: object) -> bool:
        return path in ROUTES or (isinstance(path, str) and v2.infer_target(path) is not None)


GENERATION_PATHS = GenerationPaths()


def request_id_for(given: bytes | None) -> str:
    """The client's X-Request-ID if it is a valid one, else a new one (32 hex digits)."""
    if given is not None:
        text = given.decode("latin-1")
        if VALID_REQUEST_ID.fullmatch(text):
            return text
    return os.urandom(16).hex()


class _Answered:
    """What the metrics and the access line need of an answered request."""

    __slots__ = ("model", "reason", "status", "tag")

    def __init__(self) -> None:
        self.status = 500
        self.reason: str | None = None  # a refusal's reason (service/errors.py)
        self.model = ""  # the name of the model that answered ("" before one was found)
        self.tag = ""  # its name:version


def page_label(path: str) -> str:
    """The route label of a path the pages app serves: one of PAGE_LABELS, or "other"."""
    if path in PAGE_LABELS:
        return path
    for prefix in ("/ui/", "/static_content/"):
        if path.startswith(prefix):
            return prefix.rstrip("/") if prefix == "/ui/" else "/docs"
    return "/v2" if path.startswith("/v2/") else metrics.OTHER


class Api:
    """The ASGI app of the entry service. `attach(generator)` from the worker's service __init__ makes it serve."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.key = settings.api_key.encode("utf-8")
        self.models: ModelSet | None = None  # service/model_set.py, set by attach()
        self.cancelled = 0  # requests whose client left before its body was in (this worker), shown at /info
        self.pages = self._pages_app()
        self.generation_paths = GENERATION_PATHS
        self._series: dict[tuple[str, str], tuple] = {}  # (route label, model) -> its (by status, duration) metric children
        labels = [*ROUTES, v2.INFER_LABEL]
        self._in_progress = {label: metrics.IN_PROGRESS.labels(route=label) for label in labels}
        for label in labels:  # every refusal series exists from the start, at 0, so rate() alerts have one
            for reason in metrics.REASONS:
                for name in ("", *(spec.split(":")[0] for spec in settings.models)):
                    metrics.REFUSED.labels(route=label, reason=reason, model=name)

    def attach(self, models: ModelSet) -> None:
        """Serve `models` (from the worker's service __init__)."""
        self.models = models

    async def describe(self) -> dict:
        """The default model's description (a generator service is asked at the first request or probe)."""
        return (await self.models.find(None)).described

    # --- the ASGI entry point -------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.pages(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope["headers"])  # lower-case names; a repeated header keeps its last value
        rid = request_id_for(headers.get(REQUEST_ID_HEADER))
        token = logs.REQUEST_ID.set(rid)
        path = scope["path"]
        route = ROUTES.get(path)
        try:
            answered = _Answered()
            if route is not None or v2.infer_target(path) is not None:
                label = path if route is not None else v2.INFER_LABEL
                await self._generation(route, label, scope, receive, send, headers, rid, answered)
            else:
                label = page_label(path)
                answered.status = await self._page(scope, receive, send, rid)
                answered.reason = scope.get(REFUSAL_KEY)  # a refusal by design (401) in the pages app
            seconds = time.perf_counter() - started
            status, reason, model = answered.status, answered.reason, answered.model
            by_status, duration = self._route_series(label, model)
            counter = by_status.get(status)
            if counter is None:
                counter = by_status[status] = metrics.REQUESTS.labels(route=label, status=status, model=model)
            counter.inc()
            duration.observe(seconds)
            if reason is not None:
                metrics.REFUSED.labels(route=label, reason=reason, model=model).inc()
            if self.settings.access_log:
                logs.access(scope["method"], path, label, status, seconds, answered.tag or None, reason)
        finally:
            logs.REQUEST_ID.reset(token)

    def _route_series(self, label: str, model: str) -> tuple:
        """The metric children of a route label and model, made once (labels() costs a lock and a lookup per call)."""
        series = self._series.get((label, model))
        if series is None:
            series = self._series[label, model] = ({}, metrics.DURATION.labels(route=label, model=model))
        return series

    async def _page(self, scope, receive, send, rid: str) -> int:
        """A route of the pages app, with the request id on its response; returns the status sent."""
        sent = 500

        async def send_with_id(message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                sent = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        await self.pages(scope, receive, send_with_id)
        return sent

    async def _generation(self, route: GenerationRoute | None, label: str, scope, receive, send, headers: dict, rid: str, answered) -> None:
        """A generation request from start to answer, noted in `answered`. A fault of the service itself is logged with
        its traceback and answered 500 (these routes do not pass BentoML's error middleware)."""
        try:
            await self._answer(route, label, scope, receive, send, headers, rid, answered)
        except Exception:
            logger.exception("%s %s failed", scope["method"], scope["path"])
            error = InternalError("internal error; the server log has the details")
            with contextlib.suppress(Exception):  # unless the response had already begun
                await _send(send, 500, [(b"content-type", b"application/json")], error.body(), rid)
            answered.status, answered.reason = 500, None

    async def _answer(self, route: GenerationRoute | None, label: str, scope, receive, send, headers: dict, rid: str, answered) -> None:
        in_progress = self._in_progress[label]
        version: Version | None = None
        try:
            try:
                self.authorise(headers)
                method, request = await self._parse(route, scope, receive, headers)
                asked = request.model if route is not None else v2.infer_target(scope["path"])
                serving = await self.models.find(asked)
                answered.model, answered.tag = serving.name, serving.tag
                if DRAIN.draining:
                    raise Draining("server shutting down")
                if serving.admitted >= self.settings.max_inflight:
                    limit = self.settings.max_inflight
                    raise Busy(f"server busy: {limit} requests of model {serving.name} already in progress (DCGAN_MAX_INFLIGHT)")
                self.models.admit(serving)  # one event loop per worker: plain counters
                version = serving
                DRAIN.inflight += 1
                in_progress.inc()
                if route is None:
                    status, response_headers, body = await self._infer_v2(request, receive, version, asked)
                else:
                    status, response_headers, body = await self._generate(route, method, request, headers, receive, version)
            except HttpError as e:
                await _send(send, e.status, [(b"content-type", b"application/json"), *_encode(e.headers)], e.body(), rid)
                answered.status, answered.reason = e.status, e.reason
                return
            await _send(send, status, response_headers, body, rid)  # uvicorn sends no body for HEAD
            answered.status = status
        finally:
            if version is not None:
                self.models.done(version)
                DRAIN.inflight -= 1
                in_progress.dec()

    async def load_model(self, name: str, scope, receive) -> dict:
        """POST /v2/repository/models/{name}/load: swap `name` to a stored version (body {"parameters": {"version": v}},
        else its newest), pinned for every worker of this server. What was swapped, or the HttpError why not. The key
        is checked before the body is read, and the body read as a generation request's is (bounded, in time)."""
        headers = dict(scope["headers"])
        self.authorise_admin(headers)
        if not self.settings.in_process:
            raise Conflict("a generator service does not swap versions: swaps need DCGAN_GENERATOR=inprocess")
        body = await self._body(scope, receive, headers, MAX_BODY_BYTES, check_type=False)
        try:
            asked = json.loads(body or b"{}")
            version = (asked.get("parameters") or {}).get("version")
            if version is not None and not isinstance(version, str):
                raise TypeError
        except (ValueError, TypeError, AttributeError, RecursionError):
            raise BadRequest('the body must be empty or {"parameters": {"version": "<version>"}}') from None
        stored = await asyncio.to_thread(self.models.stored, name, version)
        name = stored.tag.name  # the model's own name, also when asked by the alias
        started = time.perf_counter()
        old, new = await self.models.load(stored)
        self.models.pin(name, new.tag)
        switched, workers = await self.models.everywhere(name, new.tag)  # the other entry workers follow the pin
        if switched < workers:
            logger.warning(
                "model %s: %d of %d entry workers serve %s after %.0f s", name, switched, workers, new.tag, model_set.WORKERS_WAIT_S
            )
        return {
            "name": name,
            "tag": new.tag,
            "previous": old.tag,
            "seconds": round(time.perf_counter() - started, 3),
            "workers": {"serving": switched, "of": workers},
        }

    def authorise_admin(self, headers: dict[bytes, bytes]) -> None:
        """The model-control routes: off (403) unless DCGAN_API_KEY is set, and then only with the key (401)."""
        if not self.key:
            raise Forbidden("model control is off: it needs an API key (set DCGAN_API_KEY, send `Authorization: Bearer <key>`)")
        self.authorise(headers)

    def authorise(self, headers: dict[bytes, bytes]) -> None:
        """With DCGAN_API_KEY set: Unauthorised unless `headers` (raw, lower-case names) carry the key."""
        if not self.key:
            return
        given = headers.get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        # Header values are bytes as sent: compared with the key's UTF-8 bytes, in constant time.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            why = "missing Authorization header" if not given else "wrong API key or scheme"
            raise Unauthorised(f"{why}: send `Authorization: Bearer <key>` (DCGAN_API_KEY)")

    async def _parse(self, route: GenerationRoute | None, scope, receive, headers: dict):
        """(method, the validated request): a route's request model, or for the v2 infer route (body, header length)."""
        method = scope["method"]
        path = scope["path"]
        allowed = GENERATION_METHODS if route is not None else ("POST",)
        if method not in allowed:
            allow = ", ".join(sorted(allowed))
            raise MethodNotAllowed(f"method {method} not allowed on {path}; use {allow}", headers={"Allow": allow})
        if route is None:  # v2 infer: the path names the model
            body = await self._body(scope, receive, headers, v2.MAX_INFER_BODY, check_type=False)
            encoding, length = headers.get(b"content-encoding"), headers.get(v2.HEADER_LENGTH.lower().encode())
            try:
                body = v2.decoded(body, encoding.decode("latin-1") if encoding is not None else None)
            except v2.BadInfer as e:
                raise BadRequest(str(e)) from None
            return method, (body, length.decode("latin-1") if length is not None else None)
        query = query_params(scope["query_string"])
        if method != "POST":
            return method, request_from_query(query, route.request)
        body = await self._body(scope, receive, headers, MAX_BODY_BYTES, check_type=True)
        return method, with_query_model(request_from_json(body, route.request), query)

    async def _body(self, scope, receive, headers: dict, max_body: int, check_type: bool) -> bytes:
        """The whole body, within DCGAN_BODY_TIMEOUT_S; checks the content type and size before and while reading."""
        content_type = headers.get(b"content-type")
        # No Content-Type at all is read as JSON (as BentoML does); a different one is refused.
        if check_type and content_type is not None and content_type.split(b";")[0].strip().lower() != b"application/json":
            raise UnsupportedMediaType(f"content type must be application/json, got {content_type.decode('latin-1')!r}")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            raise PayloadTooLarge(f"body must be at most {max_body} bytes, Content-Length is {length.decode('latin-1')}")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        self.cancelled += 1
                        raise BadRequest("client disconnected before sending the whole body")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > max_body:
                        raise PayloadTooLarge(f"body must be at most {max_body} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise BodyTimeout(f"the request body did not arrive within {self.settings.body_timeout_s:g} s") from None

    async def _generate(
        self, route: GenerationRoute, method: str, request, headers: dict, receive, version: Version
    ) -> tuple[int, list, bytes]:
        """A cached answer (304) without the model, or the images in the route's form."""
        tag = etag(version.tag, route.path, request)
        cached = [(b"etag", tag.encode()), (b"cache-control", CACHE_CONTROL.encode())]
        if_none_match = headers.get(b"if-none-match")
        if not_modified(method, if_none_match.decode("latin-1") if if_none_match is not None else None, tag):
            return 304, cached, b""
        latents = route.latents(request, version.nz)  # (B, nz)
        if request.truncation != 1:
            latents = latents * np.float32(request.truncation)
        images = await self._images(version, latents, receive)  # (B, H, W, C)
        answer = route.encode(version.tag, request, images)
        return 200, [(b"content-type", answer.media_type.encode()), *cached, *_encode(answer.headers)], answer.body

    async def _infer_v2(self, parsed: tuple[bytes, str | None], receive, version: Version, asked: str) -> tuple[int, list, bytes]:
        """The Open Inference Protocol's infer (service/v2.py): seed (+ n) or raw latents z, through the same batching."""
        try:
            request, inputs = v2.parse_infer(*parsed)
            wanted = v2.latents_from(inputs, version.nz, self.settings.max_n)
        except v2.BadInfer as e:
            raise BadRequest(str(e)) from None
        latents = latents_for_seed(*wanted, version.nz) if isinstance(wanted, tuple) else wanted  # (B, nz)
        images = await self._images(version, latents, receive)
        media_type, extra, body = v2.infer_response(request, asked.split(":")[0], version.tag.split(":")[-1], images)
        return 200, [(b"content-type", media_type.encode()), *_encode(extra)], body

    async def _images(self, version: Version, latents: np.ndarray, receive) -> np.ndarray:
        """(B, nz) float32 -> (B, H, W, C) uint8, in a generator call shared with concurrent requests; the request is
        dropped (ClientGone) if its client disconnects while it waits."""

        async def client_left() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        return await version.merged(latents, client_left)

    # --- everything that is not a generation request -------------------------------------------------------------

    def info(self) -> dict:
        default = self.models.current[self.models.default]
        merged = default.merged
        return {
            **default.described,
            "models": [version.summary() for version in self.models.current.values()],
            "latents": LATENTS,
            "pixels": "uint8 = clip(round((x + 1) * 127.5), 0, 255), NHWC",
            "interpolation": "slerp(latents_for_seed(seed_a, 1, nz)[0], latents_for_seed(seed_b, 1, nz)[0], k / (steps - 1))",
            "routes": {path: route.summary for path, route in ROUTES.items()},
            # The default model's, as in its entry of "models" (each model merges its own requests).
            "merging": {
                "requests_in_progress": DRAIN.inflight,  # admitted generation requests of this worker, not yet answered
                "generator_calls_in_flight": self.settings.generator_calls,
                "generator_calls": merged.calls,
                "requests": merged.requests,
                "refused": merged.refused,
                "cancelled_disconnected": self.cancelled,  # client left before its request's body was in
                "dropped_disconnected": merged.dropped,  # client left while its request waited for the generator
                "seconds_per_image": merged.seconds_per_image,
            },
            "formats": sorted(FORMATS),
            "limits": {
                "max_n": self.settings.max_n,
                "max_steps": MAX_STEPS,
                "max_inflight": self.settings.max_inflight,
                "max_body_bytes": MAX_BODY_BYTES,
                "deadline_ms": self.settings.deadline_ms,
                "max_queued_images": self.settings.max_queued_images,
                "body_timeout_s": self.settings.body_timeout_s,
                "drain_timeout_s": self.settings.drain_timeout_s,
                "api_key_required": bool(self.settings.api_key),
            },
            "settings": self.settings.public(),
        }

    async def ready(self) -> bool:
        """Ready while every model's generator answers; not while draining, nor before attach()."""
        return not DRAIN.draining and self.models is not None and await self.models.ready()

    async def alive(self) -> bool:
        return self.models is None or await self.models.alive()

    def _pages_app(self) -> Starlette:
        async def info(request: Request) -> Response:
            self.authorise(dict(request.headers.raw))
            await self.models.ready()
            return JSONResponse(self.info())

        async def metrics_route(request: Request) -> Response:
            content, media_type = metrics.exposition()
            return Response(content, media_type=media_type)

        async def to_page(request: Request) -> Response:
            # Relative, so the page is found behind a proxy that serves the service under a path prefix.
            return RedirectResponse("ui/", status_code=307)

        async def swagger(request: Request) -> Response:
            return FileResponse(SWAGGER_PAGE)

        async def docs_json(request: Request) -> Response:
            return JSONResponse(openapi_document(self.settings))

        async def not_found(request: Request, exc: Exception) -> Response:
            return _json_error(NotFound(f"no route {request.url.path}; the routes are listed at /docs"))

        async def http_error(request: Request, exc: HttpError) -> Response:
            request.scope[REFUSAL_KEY] = exc.reason  # counted as the generation routes count theirs
            return _json_error(exc)

        async def not_allowed(request: Request, exc: Exception) -> Response:
            allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
            message = f"method {request.method} not allowed on {request.url.path}; use {allow}"
            return _json_error(MethodNotAllowed(message, headers={"Allow": allow}))

        if not PAGE_DIR.is_dir():
            # A bento whose bentofile.yaml does not include service/page/*: the API works, /ui/ is a 404.
            logger.warning("no %s: the page at /ui/ is not served", PAGE_DIR)
        return Starlette(
            routes=[
                Route("/info", info, methods=["GET"]),
                Route("/metrics", metrics_route, methods=["GET"]),
                Route("/", to_page, methods=["GET"]),
                Route("/ui", to_page, methods=["GET"]),
                Route("/docs", swagger, methods=["GET"]),
                Route("/docs.json", docs_json, methods=["GET"]),
                *v2.routes(self),
                Mount("/static_content", StaticFiles(directory=str(SWAGGER_ASSETS))),
                *([Mount("/ui", StaticFiles(directory=PAGE_DIR, html=True))] if PAGE_DIR.is_dir() else []),
            ],
            exception_handlers={404: not_found, 405: not_allowed, HttpError: http_error},
        )


def query_params(query_string: bytes) -> dict[str, str]:
    """The query's fields; one given twice is a 422 (which one counts would be a guess)."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    params = dict(pairs)
    if len(params) < len(pairs):
        twice = sorted({name for name, _ in pairs if sum(1 for other, _ in pairs if other == name) > 1})
        raise Unprocessable(f"{twice[0]} is given more than once in the query; give each field once")
    return params


def with_query_model(request, query: dict[str, str]):
    """A POST request with the query's `model`, the one field the query may carry beside a JSON body (so a URL can
    name the model for any client); the body's and the query's must agree."""
    extra = sorted(set(query) - {"model"})
    if extra:
        raise Unprocessable(f"{extra[0]} is not read from the query of a POST; send it in the JSON body (the query takes model)")
    if "model" not in query:
        return request
    if request.model is not None and request.model != query["model"]:
        raise Unprocessable(f"model is {request.model!r} in the body and {query['model']!r} in the query; give it once")
    return request_from_fields({**request.model_dump(exclude_unset=True), "model": query["model"]}, type(request))


def _json_error(e: HttpError) -> Response:
    return Response(e.body(), status_code=e.status, media_type="application/json", headers=e.headers)


def _encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode("latin-1")) for name, value in headers.items()]


async def _send(send, status: int, headers: list, body: bytes, rid: str) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append((b"x-request-id", rid.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
