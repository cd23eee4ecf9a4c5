"""The entry service `svc`: HTTP in front, seeds -> latents, images -> PNG / grid / raw bytes.

    POST /sample       {"seed": S, "n": N} -> JSON, N base64 PNGs
    POST /sample/grid  {"seed": S, "n": N} -> one PNG grid (image/png)
    GET  /sample/grid?seed=S&n=N           -> the same grid, for a browser's address bar
    POST /sample/raw   {"seed": S, "n": N} -> N*H*W*C bytes, uint8 NHWC (application/octet-stream)
    GET  /info                             -> manifest, provider, batching settings
    GET  /livez /readyz /metrics           -> BentoML's probes and Prometheus metrics

Every call into the generator goes through `_generate`, which absorbs BentoML's pooled-connection
resets (the call is idempotent) and turns generator overload into 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import logging
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
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from export.artifact import LATENTS, latents_for_seed
from service.generator import Generator
from service.http_guard import RETRY_AFTER_S, AdmissionLimit, RequestGuard
from service.images import grid, png_bytes
from service.schema import SampleRequest, SampleResponse, error_response, request_from_query, validation_error_response
from service.settings import SETTINGS

logger = logging.getLogger("bentoml.dcgan")
# With the pool never replaced (generator.py) 64 clients x 60 s saw no reset; the retries are the net
# for those nothing prevents (a keep-alive connection closed as it is reused).
RETRIES = 3
MAX_BODY_BYTES = 4096  # the largest valid body is ~40 bytes; pretty-printed JSON still fits
SAMPLE_ROUTES = frozenset({"/sample", "/sample/grid", "/sample/raw"})
GET_ROUTES = frozenset({"/sample/grid"})


class GeneratorUnavailable(Exception):
    """The generator is overloaded or cannot be reached after retries: the client should retry later."""


def _unavailable(e: GeneratorUnavailable) -> Response:
    return error_response(503, f"{e}; retry after {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})


async def info_route(request: Request) -> Response:
    svc_instance = bentoml.get_current_service()
    return JSONResponse(await svc_instance.info())


async def grid_route(request: Request) -> Response:
    try:
        req = request_from_query(dict(request.query_params))
    except ValidationError as e:
        return validation_error_response(e)
    return await bentoml.get_current_service().grid_response(req.seed, req.n)


# GET routes: BentoML's own APIs are POST only. A passive mount: it answers only these paths.
get_app = Starlette(routes=[Route("/info", info_route, methods=["GET"]), Route("/sample/grid", grid_route, methods=["GET"])])


@bentoml.service(
    name="dcgan",
    workers=1,
    traffic={"timeout": 40},  # above the generator's 30 s, so a stuck call surfaces as its error, not ours
)
@bentoml.asgi_app(get_app, path="/")
class DCGAN:
    generator = bentoml.depends(Generator)

    def __init__(self) -> None:
        self._described: dict | None = None  # the generator's describe(), fetched once

    async def _describe(self) -> dict:
        if self._described is None:
            self._described = await self.generator.to_async.describe()
        return self._described

    async def __is_ready__(self) -> bool:
        """Ready once the generator has loaded, warmed up and answered describe()."""
        try:
            await self._describe()
        except (aiohttp.ClientError, bentoml.exceptions.BentoMLException):
            return False
        return True

    async def info(self) -> dict:
        described = await self._describe()
        return {
            **described,
            "latents": LATENTS,
            "pixels": "uint8 = clip(round((x + 1) * 127.5), 0, 255), NHWC",
            "limits": {"max_n": SETTINGS.max_n, "max_inflight": SETTINGS.max_inflight, "max_body_bytes": MAX_BODY_BYTES},
        }

    async def _generate(self, seed: int, n: int) -> np.ndarray:
        """(n, H, W, C) uint8 images for (seed, n)."""
        described = await self._describe()
        latents = latents_for_seed(seed, n, described["manifest"]["model"]["nz"])  # (n, nz)
        for attempt in range(1, RETRIES + 2):
            try:
                return await self.generator.to_async.generate(latents)
            except ServiceUnavailable:
                raise GeneratorUnavailable("generator overloaded: the request could not be batched within its latency budget") from None
            except asyncio.TimeoutError:
                raise GeneratorUnavailable("generator did not answer in time") from None
            except aiohttp.ClientConnectionError as e:
                # BentoML #4971: a pooled connection reset under concurrency. The call is idempotent: send it again.
                if attempt > RETRIES:
                    raise GeneratorUnavailable(f"generator unreachable after {RETRIES} retries ({type(e).__name__})") from None
                logger.warning("generator call failed (%s: %s); retry %d of %d", type(e).__name__, e, attempt, RETRIES)

    def _headers(self, seed: int, n: int, images: np.ndarray) -> dict[str, str]:
        return {"X-Seed": str(seed), "X-N": str(n), "X-Model": self._described["model"], "X-Shape": ",".join(map(str, images.shape))}

    @bentoml.api(route="/sample", input_spec=SampleRequest)
    async def sample(self, seed: int, n: int = 1) -> SampleResponse:
        """n images for a seed, as base64-encoded PNG files in JSON."""
        try:
            images = await self._generate(seed, n)  # (n, H, W, C)
        except GeneratorUnavailable as e:
            return _unavailable(e)
        _, h, w, c = images.shape
        return SampleResponse(
            seed=seed, n=n, model=self._described["model"], width=w, height=h, channels=c,
            images=[base64.b64encode(png_bytes(image)).decode("ascii") for image in images],
        )

    async def grid_response(self, seed: int, n: int) -> Response:
        try:
            images = await self._generate(seed, n)
        except GeneratorUnavailable as e:
            return _unavailable(e)
        return Response(png_bytes(grid(images)), media_type="image/png", headers=self._headers(seed, n, images))

    @bentoml.api(route="/sample/grid", input_spec=SampleRequest)
    async def sample_grid(self, seed: int, n: int = 1) -> Annotated[Path, ContentType("image/png")]:
        """The n images as one PNG grid, ceil(sqrt(n)) per row, 2 px apart. Also GET /sample/grid?seed=S&n=N."""
        return await self.grid_response(seed, n)

    @bentoml.api(route="/sample/raw", input_spec=SampleRequest)
    async def sample_raw(self, seed: int, n: int = 1) -> Annotated[Path, ContentType("application/octet-stream")]:
        """The n images as raw uint8 bytes, shape (n, H, W, C) C-order, given in the X-Shape header."""
        try:
            images = await self._generate(seed, n)
        except GeneratorUnavailable as e:
            return _unavailable(e)
        return Response(images.tobytes(), media_type="application/octet-stream", headers=self._headers(seed, n, images))


# Outermost first: refuse overload before reading a byte, then refuse malformed requests.
DCGAN.add_asgi_middleware(AdmissionLimit, limit=SETTINGS.max_inflight, paths=SAMPLE_ROUTES)
DCGAN.add_asgi_middleware(RequestGuard, post_paths=SAMPLE_ROUTES, get_paths=GET_ROUTES, max_body=MAX_BODY_BYTES)

svc = DCGAN
