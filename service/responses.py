"""What a generation route answers, and how it is cached: a response is a pure function of (model, route, request).

    etag(model, route, request)        the strong ETag of that response
    not_modified(method, header, tag)  a matching If-None-Match: True for 304 (GET, HEAD); PreconditionFailed (POST)
    sample_json / one_image / raw_bytes / animation
                                       the encoders of the route table (service/routes.py): images -> an Answer

Every (model tag, route, request) always gives the same bytes, so a successful generation response is
`Cache-Control: public, max-age=31536000, immutable` with a strong ETag, and a client or CDN that holds it
can skip the model: `If-None-Match` with its ETag gets 304 on GET and HEAD. A POST that carries a matching
If-None-Match gets 412, as RFC 9110 (13.1.2) has for methods other than GET and HEAD. Errors carry neither
header.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from service.errors import PreconditionFailed
from service.images import animation_bytes, grid, image_bytes
from service.schema import FORMATS

CACHE_CONTROL = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Answer:
    """A successful response: its body, media type and the headers beyond ETag and Cache-Control."""

    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def etag(model: str, route: str, request) -> str:
    """A strong ETag: a hash of the model tag (name:version, whichever way the request named it), the route and every
    other field of the request (defaults included), each field as name=repr(value) in the model's own field order."""
    fields = (f"{name}={value!r}" for name, value in request.__dict__.items() if name != "model")
    key = "\n".join([model, route, *fields])
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def _matches(if_none_match: str, tag: str) -> bool:
    """If-None-Match's weak comparison: "*", the tag, or the tag marked weak, among its comma-separated values."""
    values = {v.strip() for v in if_none_match.split(",")}
    return "*" in values or tag in values or f"W/{tag}" in values


def not_modified(method: str, if_none_match: str | None, tag: str) -> bool:
    """True when the client holds this response already (answer 304); raises PreconditionFailed on a POST."""
    if if_none_match is None or not _matches(if_none_match, tag):
        return False
    if method in ("GET", "HEAD"):
        return True
    raise PreconditionFailed(
        "precondition failed: If-None-Match matches this response's ETag (a POST answers that with 412; GET answers 304)"
    )


def _facts(model: str, request, images: np.ndarray) -> dict[str, str]:
    """What a binary answer holds, in X- headers (the JSON answer says it in its fields)."""
    seeds = (
        {"X-Seed-A": str(request.seed_a), "X-Seed-B": str(request.seed_b), "X-Steps": str(request.steps)}
        if hasattr(request, "seed_a")
        else {"X-Seed": str(request.seed), "X-N": str(request.n)}
    )
    shape = ",".join(map(str, images.shape))
    return {**seeds, "X-Model": model, "X-Shape": shape, "X-Truncation": repr(request.truncation)}


def sample_json(model: str, request, images: np.ndarray) -> Answer:
    """/sample: JSON with the n images as base64 files (the fields of schema.SampleResponse, in its order)."""
    _, h, w, c = images.shape
    files = [base64.b64encode(image_bytes(image, request.format, request.quality)).decode("ascii") for image in images]
    body = {
        "seed": request.seed,
        "n": request.n,
        "model": model,
        "width": w,
        "height": h,
        "channels": c,
        "truncation": request.truncation,
        "format": request.format,
        "images": files,
    }
    return Answer(json.dumps(body, separators=(",", ":")).encode(), "application/json")


def one_image(model: str, request, images: np.ndarray) -> Answer:
    """/sample/grid and /interpolate/strip: the images in one file (the strip: every frame in one row)."""
    cols = request.steps if hasattr(request, "steps") else None
    content = image_bytes(grid(images, cols=cols), request.format, request.quality)
    return Answer(content, FORMATS[request.format], _facts(model, request, images))


def raw_bytes(model: str, request, images: np.ndarray) -> Answer:
    """/sample/raw: uint8 NHWC bytes, the shape in X-Shape."""
    return Answer(images.tobytes(), "application/octet-stream", _facts(model, request, images))


def animation(file_format: str, media_type: str):
    """/interpolate (GIF) and /interpolate/apng: the frames as a looping animation."""

    def encode(model: str, request, images: np.ndarray) -> Answer:
        return Answer(animation_bytes(images, file_format), media_type, _facts(model, request, images))

    return encode
