"""The route table: each generation route declared once.

A route is its path, its request model, how its latents are made, how its images are encoded, and one line for
the docs. Everything that repeats a route is derived from this table: the POST, GET and HEAD forms and their
parsing (service/api.py), the ETag (service/responses.py), /info's description, the OpenAPI document and so
/docs (service/openapi.py), the metrics' route label (service/metrics.py), the API key's reach, and the route
table in docs/serving.md (a test checks it lists exactly these routes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from contract.latents import latents_for_seed
from service import responses
from service.interpolate import interpolation_latents
from service.schema import InterpolateRequest, RawRequest, SampleRequest, SampleResponse, StripRequest

GENERATION_METHODS = ("POST", "GET", "HEAD")  # every generation route: a JSON body, or its fields in the query string


def seed_latents(request, nz: int) -> np.ndarray:
    return latents_for_seed(request.seed, request.n, nz)  # (n, nz)


def walk_latents(request, nz: int) -> np.ndarray:
    return interpolation_latents(request.seed_a, request.seed_b, request.steps, nz)  # (steps, nz)


@dataclass(frozen=True)
class Route:
    path: str
    request: type[BaseModel]  # validates the JSON body or the query string
    latents: Callable[[BaseModel, int], np.ndarray]  # (request, nz) -> (B, nz) float32, before truncation
    encode: Callable[[str, BaseModel, np.ndarray], responses.Answer]  # (model tag, request, (B, H, W, C) uint8)
    summary: str  # one line: the docs table and the OpenAPI summary
    returns: str  # what the body is, for the docs table
    media_types: tuple[str, ...]  # the success body's possible media types (OpenAPI)
    response_model: type[BaseModel] | None = None  # the JSON body's schema, where the body is JSON


IMAGE_TYPES = ("image/png", "image/webp", "image/jpeg")

ROUTE_LIST: tuple[Route, ...] = (
    Route(
        "/sample",
        SampleRequest,
        seed_latents,
        responses.sample_json,
        "n images for a seed, as base64-encoded image files (PNG unless `format` says otherwise) in JSON",
        "JSON: the n images as base64 files, with seed, n, model, width, height, channels, truncation, format",
        ("application/json",),
        SampleResponse,
    ),
    Route(
        "/sample/grid",
        SampleRequest,
        seed_latents,
        responses.one_image,
        "The n images as one image, ceil(sqrt(n)) per row, 2 px apart (PNG unless `format` says otherwise)",
        "one image, the n in a grid",
        IMAGE_TYPES,
    ),
    Route(
        "/sample/raw",
        RawRequest,
        seed_latents,
        responses.raw_bytes,
        "The n images as raw uint8 bytes, shape (n, H, W, C) C-order, given in the X-Shape header",
        "raw uint8 NHWC bytes, shape in `X-Shape`",
        ("application/octet-stream",),
    ),
    Route(
        "/interpolate",
        InterpolateRequest,
        walk_latents,
        responses.animation("GIF", "image/gif"),
        "Walk the latent space from seed_a to seed_b: `steps` frames by spherical interpolation, as a looping GIF; "
        "the end frames are image 0 of /sample for each seed",
        "animated GIF of a spherical walk between two seeds",
        ("image/gif",),
    ),
    Route(
        "/interpolate/apng",
        InterpolateRequest,
        walk_latents,
        responses.animation("PNG", "image/apng"),
        "The frames of /interpolate as a looping animated PNG (lossless, also for RGB models)",
        "the same walk as a looping animated PNG",
        ("image/apng",),
    ),
    Route(
        "/interpolate/strip",
        StripRequest,
        walk_latents,
        responses.one_image,
        "The frames of /interpolate side by side in one row, 2 px apart, seed_a on the left (PNG unless `format`)",
        "the walk's frames in one row, one image",
        IMAGE_TYPES,
    ),
)
ROUTES: dict[str, Route] = {route.path: route for route in ROUTE_LIST}


def markdown_table() -> str:
    """docs/serving.md's table of the generation routes, from ROUTE_LIST."""
    rows = ["| route | request fields | returns |", "|---|---|---|"]
    for route in ROUTE_LIST:
        fields = ", ".join(f"`{name}`" for name in route.request.model_fields)
        rows.append(f"| `{route.path}` | {fields} | {route.returns} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
