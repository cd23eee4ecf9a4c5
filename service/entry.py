"""The entry service `svc`: HTTP in front, seeds -> latents, images -> PNG / WebP / JPEG / grid / raw bytes.

    POST /sample             {"seed": S, "n": N} -> JSON, N base64 images (PNG; or "format": "webp" / "jpeg")
    POST /sample/grid        {"seed": S, "n": N} -> one image, the N in a grid
    POST /sample/raw         {"seed": S, "n": N} -> N*H*W*C bytes, uint8 NHWC (application/octet-stream)
    POST /interpolate        {"seed_a": A, "seed_b": B, "steps": T} -> T frames from A to B, looping GIF
    POST /interpolate/apng   (same body)         -> the same frames, looping animated PNG (lossless)
    POST /interpolate/strip  (same body)         -> the same frames in one row, one image
    GET  any of the above, its fields in the query string (/sample/grid?seed=S&n=N): for <img src>, caches, CDNs
         every one also takes "truncation" (latent scale psi in (0, 1]); the image routes "format" and "quality"
    GET  /info                                   -> manifest, provider, batching settings, limits
    GET  /ui/                                    -> the page: gallery, seed explorer, latent walk (service/page/)
    GET  /                                       -> redirect to /ui/ (BentoML's Swagger UI is at /docs)
    GET  /livez /readyz /metrics                 -> BentoML's probes and Prometheus metrics
    /v2/...                                      -> the Open Inference Protocol (KServe v2), service/v2.py

Each answer is a pure function of (model, route, request): strong ETags and If-None-Match (service/responses.py).
Every call into the generator goes through `_images`, which merges concurrent requests into shared
generator calls (service/coalesce.py): adaptive batching, with batches as large as the queue that
formed while the model was busy. Where the model runs is DCGAN_GENERATOR's choice:

  inprocess (default)  in this worker, in a thread beside the event loop: no second process and no
                       internal HTTP call per batch (the cheaper path on a CPU).
  service              in the generator service (service/generator.py), a process of its own that
                       BentoML batches across entry workers (a GPU shared by several entry workers).
                       Each call there absorbs BentoML's pooled-connection resets (it is idempotent),
                       waits out a generator restart, and turns its overload into 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import aiohttp
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from bentoml.validators import ContentType
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from contract.latents import LATENTS, latents_for_seed
from service import v2
from service.coalesce import ClientGone, Coalescer, Overloaded
from service.drain import DRAIN, install_entry_drain
from service.engine import Engine
from service.gc_freeze import freeze_startup_heap
from service.generator import MODEL, GeneratorService
from service.http_guard import CLIENT_LEFT, CONDITIONAL, RETRY_AFTER_S, AdmissionLimit, ApiKeyAuth, RequestGuard
from service.interpolate import interpolation_latents
from service.preflight import check_stored_model
from service.request_id import RequestId, name_requests_in_logs
from service.responses import ROUTES, etag, images_response, not_modified
from service.schema import (
    DEFAULT_QUALITY,
    FORMATS,
    MAX_STEPS,
    InterpolateRequest,
    RawRequest,
    SampleRequest,
    SampleResponse,
    StripRequest,
    error_response,
    request_from_query,
    validation_error_response,
)
from service.settings import SETTINGS

logger = logging.getLogger("bentoml.dcgan")
IN_PROCESS = SETTINGS.generator == "inprocess"
# A generator call that cannot connect is sent again (it is idempotent), after a growing pause, for up to
# DCGAN_GENERATOR_RESTART_WAIT_S: a pooled connection reset under load (BentoML #4971) heals at once, a
# generator worker that crashed is back in seconds (BentoML restarts it) and its callers still get their images.
RETRY_PAUSE_S = (0.05, 0.1, 0.2, 0.5, 1.0)
READY_TIMEOUT_S = 2.0  # the generator's answer to a readiness probe; the manifests' probes time out at 3 s
MAX_BODY_BYTES = 4096  # the largest valid body is ~80 bytes; pretty-printed JSON still fits
GET_ROUTES = frozenset(ROUTES)  # every generation route also answers GET and HEAD, with its fields in the query string
PAGE_DIR = Path(__file__).parent / "page"
# BentoML's Swagger UI, which BentoML serves at "/"; it loads ./static_content/ and ./docs.json, so it works from /docs too.
SWAGGER_PAGE = importlib.resources.files("_bentoml_impl.server") / "main-openapi.html"


class NoImages(Exception):
    """A generation request that ends without images: 503 + Retry-After (the server is overloaded or the generator
    unreachable in time: retry later), or 499 for a client that left (uvicorn drops it; the access log keeps it)."""

    status = 503

    def response(self) -> Response:
        if self.status == 503:
            return error_response(503, f"{self}; retry after {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
        return error_response(self.status, str(self))


class GeneratorUnavailable(NoImages):
    status = 503


class ClientLeft(NoImages):
    status = 499  # nginx's "client closed request"


async def info_route(request: Request) -> Response:
    svc_instance = bentoml.get_current_service()
    return JSONResponse(await svc_instance.info())


def get_route(route: str):
    """The GET (and HEAD) form of a generation route: its request's fields in the query string."""
    model = ROUTES[route]

    async def endpoint(request: Request) -> Response:
        try:
            req = request_from_query(dict(request.query_params), model)
        except ValidationError as e:
            return validation_error_response(e, model)
        return await bentoml.get_current_service().respond(route, req)

    return endpoint


async def swagger_route(request: Request) -> Response:
    return FileResponse(SWAGGER_PAGE)


async def to_page(request: Request) -> Response:
    # Relative, so the page is found behind a proxy that serves the service under a path prefix.
    return RedirectResponse("ui/", status_code=307)


# GET routes and the page: BentoML's own APIs are POST only. A passive mount: it answers only these
# paths, and comes before BentoML's index route, so "/" is ours.
get_app = Starlette(
    routes=[
        Route("/info", info_route, methods=["GET"]),
        *(Route(route, get_route(route), methods=["GET"]) for route in ROUTES),
        *v2.routes(bentoml.get_current_service),
        Route("/", to_page, methods=["GET"]),
        Route("/ui", to_page, methods=["GET"]),
        Route("/docs", swagger_route, methods=["GET"]),
        *([Mount("/ui", StaticFiles(directory=PAGE_DIR, html=True))] if PAGE_DIR.is_dir() else []),
    ]
)
if not PAGE_DIR.is_dir():
    # A bento whose bentofile.yaml does not include service/page/*: the API works, /ui/ is a 404.
    logger.warning("no %s: the page at /ui/ is not served", PAGE_DIR)


@bentoml.service(
    name="dcgan",
    workers=1,
    traffic={"timeout": 40},  # above the generator's 30 s, so a stuck call surfaces as its error, not ours
    logging={"access": {"enabled": SETTINGS.access_log}},
    # OpenTelemetry's middleware does nothing for an excluded URL; "." matches every one.
    **({} if SETTINGS.tracing else {"tracing": {"excluded_urls": ["."]}}),
)
@bentoml.asgi_app(get_app, path="/")
class EntryService:
    if IN_PROCESS:
        model = MODEL  # loaded by this worker (the bento packs it either way)
    else:
        generator = bentoml.depends(GeneratorService)

    @bentoml.on_deployment
    def check_artifact() -> None:
        """Runs once in the `bentoml serve` process before any worker starts: a bad artifact stops start-up here."""
        logger.info("start-up check: %s", check_stored_model(MODEL.resolve()))  # service/preflight.py

    def __init__(self) -> None:
        self._described: dict | None = None  # the generator's describe(), fetched once
        self._generator_seen = time.monotonic()  # when the generator last answered (start-up counts as an answer)
        if IN_PROCESS:
            self._engine = Engine(self.model)
            # ONNX Runtime releases the GIL: its calls run in these threads while the loop serves HTTP and encodes PNGs.
            self._threads = ThreadPoolExecutor(SETTINGS.generator_calls, thread_name_prefix="onnxruntime")
            self._described = self._engine.describe({"max_batch_size": SETTINGS.max_batch_size})
            logger.info("%s, in the entry worker", self._engine.loaded_line())
        # Concurrent requests share generator calls (service/coalesce.py); a generator service batches across workers too.
        self._merged = Coalescer(
            self._call_in_process if IN_PROCESS else self._call_generator,
            SETTINGS.max_batch_size,
            SETTINGS.generator_calls,
            deadline_s=SETTINGS.deadline_ms / 1000,
            max_queued_images=SETTINGS.max_queued_images,
        )
        install_entry_drain(SETTINGS.drain_timeout_s)  # SIGTERM: refuse new work, finish the admitted, then stop
        name_requests_in_logs()
        freeze_startup_heap()

    async def describe(self) -> dict:
        if self._described is None:
            self._described = await self.generator.to_async.describe()
        return self._described

    async def __is_ready__(self) -> bool:
        """Ready while the generator answers (it has loaded, warmed up and passed its golden check); not while draining
        or while it is down. In process the engine did all that before this worker took a request.

        A generator service is asked on every probe, with a short timeout: while a generator worker restarts, its
        listening socket still accepts connections, and an unbounded call would hang the probe instead of failing it.
        """
        if DRAIN.draining:
            return False
        return IN_PROCESS or await self._generator_answers()

    async def __is_alive__(self) -> bool:
        """Alive unless the generator has not answered for longer than DCGAN_GENERATOR_RESTART_WAIT_S.

        Outside a container BentoML restarts a dead generator worker within seconds. Inside one (the image sets
        BENTOML_CONTAINERIZED) it does not, and only a restart of the container helps: /livez turns 503, and the
        liveness probe restarts the pod instead of leaving it up and never ready.
        """
        if IN_PROCESS or time.monotonic() - self._generator_seen < SETTINGS.generator_restart_wait_s:
            return True
        return await self._generator_answers()

    async def _generator_answers(self) -> bool:
        try:
            self._described = await asyncio.wait_for(self.generator.to_async.describe(), READY_TIMEOUT_S)
        except (aiohttp.ClientError, bentoml.exceptions.BentoMLException, TimeoutError):
            return False
        self._generator_seen = time.monotonic()
        self._merged.generator_up()  # it answers: new requests may queue again
        return True

    async def info(self) -> dict:
        described = await self.describe()
        return {
            **described,
            "latents": LATENTS,
            "pixels": "uint8 = clip(round((x + 1) * 127.5), 0, 255), NHWC",
            "interpolation": "slerp(latents_for_seed(seed_a, 1, nz)[0], latents_for_seed(seed_b, 1, nz)[0], k / (steps - 1))",
            "merging": {
                "requests_in_progress": DRAIN.inflight,  # admitted generation requests of this worker, not yet answered
                "generator_calls_in_flight": SETTINGS.generator_calls,
                "generator_calls": self._merged.calls,
                "requests": self._merged.requests,
                "refused": self._merged.refused,
                "cancelled_disconnected": RequestGuard.cancelled,  # client left before its request's body was in
                "dropped_disconnected": self._merged.dropped,  # client left while its request waited for the generator
                "seconds_per_image": self._merged.seconds_per_image,
            },
            "formats": sorted(FORMATS),
            "limits": {
                "max_n": SETTINGS.max_n,
                "max_steps": MAX_STEPS,
                "max_inflight": SETTINGS.max_inflight,
                "max_body_bytes": MAX_BODY_BYTES,
                "deadline_ms": SETTINGS.deadline_ms,
                "max_queued_images": SETTINGS.max_queued_images,
                "body_timeout_s": SETTINGS.body_timeout_s,
                "drain_timeout_s": SETTINGS.drain_timeout_s,
                "api_key_required": bool(SETTINGS.api_key),
            },
        }

    async def _nz(self) -> int:
        return (await self.describe())["manifest"]["model"]["nz"]

    async def _images(self, latents: np.ndarray) -> np.ndarray:
        """(B, nz) float32 latents -> (B, H, W, C) uint8 images, in a generator call shared with concurrent requests."""
        try:
            return await self._merged(latents, CLIENT_LEFT.get())
        except Overloaded as e:
            raise GeneratorUnavailable(f"server overloaded: {e}") from None
        except ClientGone as e:
            raise ClientLeft(str(e)) from None

    async def _call_in_process(self, latents: np.ndarray) -> np.ndarray:
        """One ONNX Runtime call in this worker: (B, nz) float32 latents -> (B, H, W, C) uint8 images."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._engine.generate, latents)

    async def _call_generator(self, latents: np.ndarray) -> np.ndarray:
        """One call of the generator service: (B, nz) float32 latents -> (B, H, W, C) uint8 images."""
        failed_at = None  # this call's first connection failure
        try:
            for attempt in itertools.count():
                try:
                    images = await self.generator.to_async.generate(latents)
                    self._generator_seen = time.monotonic()
                    return images
                except ServiceUnavailable:
                    raise GeneratorUnavailable("generator overloaded: the request could not be batched within its latency budget") from None
                except TimeoutError:
                    raise GeneratorUnavailable("generator did not answer in time") from None
                except aiohttp.ClientConnectionError as e:
                    now = time.monotonic()
                    failed_at = failed_at or now
                    if attempt >= 1:  # twice in a row: down, not a lone pooled-connection reset; refuse new work meanwhile
                        self._merged.generator_down()
                    # The wait counts from the outage's start, shared by the calls that queued behind it.
                    began = min(failed_at, self._merged.unavailable_since or failed_at)
                    if now - began >= SETTINGS.generator_restart_wait_s:
                        raise GeneratorUnavailable(f"generator unreachable for {now - began:.0f} s ({type(e).__name__})") from None
                    if attempt % 20 == 0:
                        wait_s = SETTINGS.generator_restart_wait_s
                        logger.warning("generator unreachable (%s: %s); retrying for up to %d s", type(e).__name__, e, wait_s)
                    await asyncio.sleep(RETRY_PAUSE_S[min(attempt, len(RETRY_PAUSE_S) - 1)])
        finally:
            # Answered, refused or given up: either way new requests are judged afresh (a call still failing marks it
            # down again), so the entry can never stay refusing with nothing left to clear the mark.
            self._merged.generator_up()

    async def infer_v2(self, body: bytes, header_length: str | None) -> Response:
        """POST /v2/models/dcgan/infer (service/v2.py): seed (+ n) or raw latents z, through the same batching."""
        nz = await self._nz()
        try:
            request, inputs = v2.parse_infer(body, header_length)
            asked = v2.latents_from(inputs, nz)
        except v2.BadInfer as e:
            return error_response(400, str(e))
        latents = latents_for_seed(*asked, nz) if isinstance(asked, tuple) else asked  # (B, nz)
        try:
            images = await self._images(latents)
        except NoImages as e:
            return e.response()
        return v2.infer_response(request, self._described["model"].split(":")[-1], images)

    async def respond(self, route: str, request) -> Response:
        """Every generation route, POST or GET: a cached answer (304/412) without the model, or the images in the route's
        form (service/responses.py)."""
        nz = await self._nz()  # also fetches the model tag, once
        model = self._described["model"]
        tag = etag(model, route, request)
        answered = not_modified(*CONDITIONAL.get(), tag)
        if answered is not None:
            return answered
        if isinstance(request, InterpolateRequest):
            latents = interpolation_latents(request.seed_a, request.seed_b, request.steps, nz)  # (steps, nz)
        else:
            latents = latents_for_seed(request.seed, request.n, nz)  # (n, nz)
        if request.truncation != 1:
            latents = latents * np.float32(request.truncation)
        try:
            images = await self._images(latents)  # (B, H, W, C)
        except NoImages as e:
            return e.response()
        return images_response(model, route, request, images, tag)

    @bentoml.api(route="/sample", input_spec=SampleRequest)
    async def sample(
        self, seed: int, n: int = 1, truncation: float = 1.0, format: str = "png", quality: int = DEFAULT_QUALITY
    ) -> SampleResponse:
        """n images for a seed, as base64-encoded image files (PNG unless `format` says otherwise) in JSON. Also GET."""
        fields = {"seed": seed, "n": n, "truncation": truncation, "format": format, "quality": quality}
        return await self.respond("/sample", SampleRequest.model_construct(**fields))

    @bentoml.api(route="/sample/grid", input_spec=SampleRequest)
    async def sample_grid(
        self, seed: int, n: int = 1, truncation: float = 1.0, format: str = "png", quality: int = DEFAULT_QUALITY
    ) -> Annotated[Path, ContentType("image/png")]:
        """The n images as one image, ceil(sqrt(n)) per row, 2 px apart (PNG unless `format` says otherwise). Also GET."""
        fields = {"seed": seed, "n": n, "truncation": truncation, "format": format, "quality": quality}
        return await self.respond("/sample/grid", SampleRequest.model_construct(**fields))

    @bentoml.api(route="/sample/raw", input_spec=RawRequest)
    async def sample_raw(self, seed: int, n: int = 1, truncation: float = 1.0) -> Annotated[Path, ContentType("application/octet-stream")]:
        """The n images as raw uint8 bytes, shape (n, H, W, C) C-order, given in the X-Shape header. Also GET."""
        return await self.respond("/sample/raw", RawRequest.model_construct(seed=seed, n=n, truncation=truncation))

    @bentoml.api(route="/interpolate", input_spec=InterpolateRequest)
    async def interpolate(
        self, seed_a: int, seed_b: int, steps: int = 16, truncation: float = 1.0
    ) -> Annotated[Path, ContentType("image/gif")]:
        """Walk the latent space from seed_a to seed_b: `steps` frames by spherical interpolation, as a looping GIF.

        The first and last frames are image 0 of /sample for seed_a and seed_b; they are shown longer. Also GET.
        """
        fields = {"seed_a": seed_a, "seed_b": seed_b, "steps": steps, "truncation": truncation}
        return await self.respond("/interpolate", InterpolateRequest.model_construct(**fields))

    @bentoml.api(route="/interpolate/apng", input_spec=InterpolateRequest)
    async def interpolate_apng(
        self, seed_a: int, seed_b: int, steps: int = 16, truncation: float = 1.0
    ) -> Annotated[Path, ContentType("image/apng")]:
        """The frames of /interpolate as a looping animated PNG (lossless, also for RGB models). Also GET."""
        fields = {"seed_a": seed_a, "seed_b": seed_b, "steps": steps, "truncation": truncation}
        return await self.respond("/interpolate/apng", InterpolateRequest.model_construct(**fields))

    @bentoml.api(route="/interpolate/strip", input_spec=StripRequest)
    async def interpolate_strip(
        self,
        seed_a: int,
        seed_b: int,
        steps: int = 16,
        truncation: float = 1.0,
        format: str = "png",
        quality: int = DEFAULT_QUALITY,
    ) -> Annotated[Path, ContentType("image/png")]:
        """The frames of /interpolate side by side in one row, 2 px apart, seed_a on the left (PNG unless `format`). Also GET."""
        fields = {"seed_a": seed_a, "seed_b": seed_b, "steps": steps, "truncation": truncation, "format": format, "quality": quality}
        return await self.respond("/interpolate/strip", StripRequest.model_construct(**fields))


# Outermost first: the request id (service/request_id.py), then (service/http_guard.py) the API key, the whole body within
# its deadline and valid, and only then a place among the requests in progress, so that slow or bad clients never hold one.
EntryService.add_asgi_middleware(RequestId)
if SETTINGS.api_key:  # no layer at all without a key: every middleware costs each request
    protected = frozenset({*ROUTES, "/info", v2.INFER_PATH, f"/v2/models/{v2.MODEL_NAME}"})
    EntryService.add_asgi_middleware(ApiKeyAuth, key=SETTINGS.api_key, paths=protected)
EntryService.add_asgi_middleware(
    RequestGuard,
    post_models=ROUTES,
    get_paths=GET_ROUTES,
    max_body=MAX_BODY_BYTES,
    body_timeout_s=SETTINGS.body_timeout_s,
    raw_bodies={v2.INFER_PATH: v2.MAX_INFER_BODY},
)
EntryService.add_asgi_middleware(AdmissionLimit, limit=SETTINGS.max_inflight, paths=frozenset({*ROUTES, v2.INFER_PATH}))

svc = EntryService
