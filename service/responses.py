"""What each generation route answers, and how it is cached: a response is a pure function of (model, route, request).

    ROUTES                         route -> the request model its JSON body or query string validates against
    etag(model, route, request)    the strong ETag of that response
    not_modified(...)              the answer to a matching If-None-Match: 304 (GET, HEAD) or 412 (POST), else None
    images_response(...)           the images in the route's form, with ETag, Cache-Control (and X- headers)

Every (model tag, route, request) always gives the same bytes, so a successful generation response is
`Cache-Control: public, max-age=31536000, immutable` with a strong ETag, and a client or CDN that holds it
can skip the model: `If-None-Match` with its ETag gets 304 on GET and HEAD. A POST that carries a matching
If-None-Match gets 412, as RFC 9110 (13.1.2) has for methods other than GET and HEAD. Errors carry neither
header.
"""

from __future__ import annotations

import base64
import hashlib

import numpy as np
from starlette.responses import Response

from service.images import animation_bytes, grid, image_bytes
from service.schema import FORMATS, InterpolateRequest, RawRequest, SampleRequest, SampleResponse, StripRequest, error_response

ROUTES = {
    "/sample": SampleRequest,
    "/sample/grid": SampleRequest,
    "/sample/raw": RawRequest,
    "/interpolate": InterpolateRequest,
    "/interpolate/apng": InterpolateRequest,
    "/interpolate/strip": StripRequest,
}
ANIMATIONS = {"/interpolate": ("GIF", "image/gif"), "/interpolate/apng": ("PNG", "image/apng")}  # route -> (Pillow format, type)
CACHE_CONTROL = "public, max-age=31536000, immutable"


def etag(model: str, route: str, request) -> str:
    """A strong ETag: a hash of the model tag, the route and every field of the request (defaults included), each
    field as name=repr(value) in the model's own field order."""
    key = "\n".join([model, route, *(f"{name}={value!r}" for name, value in request)])
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def _matches(if_none_match: str, tag: str) -> bool:
    """If-None-Match's weak comparison: "*", the tag, or the tag marked weak, among its comma-separated values."""
    values = {v.strip() for v in if_none_match.split(",")}
    return "*" in values or tag in values or f"W/{tag}" in values


def not_modified(method: str, if_none_match: str | None, tag: str) -> Response | None:
    if if_none_match is None or not _matches(if_none_match, tag):
        return None
    if method in ("GET", "HEAD"):
        return Response(status_code=304, headers={"ETag": tag, "Cache-Control": CACHE_CONTROL})
    return error_response(
        412, "precondition failed: If-None-Match matches this response's ETag (a POST answers that with 412; GET answers 304)"
    )


def images_response(model: str, route: str, request, images: np.ndarray, tag: str) -> Response:
    """(B, H, W, C) uint8 images -> the route's response: JSON of base64 files, one image file, an animation or raw bytes.

    Every one carries its ETag (`tag`) and Cache-Control; the binary ones also say what they hold in X- headers
    (the JSON body says it in its fields)."""
    cached = {"ETag": tag, "Cache-Control": CACHE_CONTROL}
    if route == "/sample":
        _, h, w, c = images.shape
        files = [base64.b64encode(image_bytes(image, request.format, request.quality)).decode("ascii") for image in images]
        fields = {"seed": request.seed, "n": request.n, "model": model, "width": w, "height": h, "channels": c}
        body = SampleResponse.model_construct(**fields, truncation=request.truncation, format=request.format, images=files)
        return Response(body.model_dump_json(), media_type="application/json", headers=cached)
    seeds = (
        {"X-Seed-A": str(request.seed_a), "X-Seed-B": str(request.seed_b), "X-Steps": str(request.steps)}
        if isinstance(request, InterpolateRequest)
        else {"X-Seed": str(request.seed), "X-N": str(request.n)}
    )
    shape = ",".join(map(str, images.shape))
    headers = {**cached, **seeds, "X-Model": model, "X-Shape": shape, "X-Truncation": repr(request.truncation)}
    if route == "/sample/raw":
        return Response(images.tobytes(), media_type="application/octet-stream", headers=headers)
    if route in ANIMATIONS:
        file_format, media_type = ANIMATIONS[route]
        return Response(animation_bytes(images, file_format), media_type=media_type, headers=headers)
    cols = request.steps if route == "/interpolate/strip" else None  # the strip: every frame in one row
    content = image_bytes(grid(images, cols=cols), request.format, request.quality)
    return Response(content, media_type=FORMATS[request.format], headers=headers)
