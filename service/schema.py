"""The HTTP contract: request and response models, and how a bad request becomes a 4xx naming each field and rule.

The request models are strict on purpose: `true`, `1.0` and `"1"` are not integers here, and an
unknown field (a typo such as "count") is an error rather than silently ignored.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from service.errors import BadRequest, HttpError, Unprocessable
from service.settings import MAX_SEED, SETTINGS

MAX_STEPS = 64  # frames of one interpolation: 64 images, the cost of the largest default /sample
SEED_RULE = "Integer in [0, 2**63-1]."
FORMATS = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}  # image format -> media type
DEFAULT_QUALITY = 90


# Options of the image routes, one definition each.
def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError("must be > 0")
    return value


# (0, 1]: the lower bound is checked by a validator, since `gt` would write JSON Schema's numeric exclusiveMinimum into
# BentoML's OpenAPI 3.0 document, where that keyword is a boolean beside "minimum".
Truncation = Annotated[
    float,
    Field(
        le=1,
        allow_inf_nan=False,
        json_schema_extra={"minimum": 0, "exclusiveMinimum": True},
        description="Latent scale psi in (0, 1]: the latents are multiplied by it (the truncation trick); smaller values "
        "trade variety for typical-looking images. 1 (default) is the plain model.",
        examples=[1.0],
    ),
    AfterValidator(_positive),
]
ImageFormat = Annotated[
    Literal["png", "webp", "jpeg"],
    Field(description="png (lossless, default), webp (lossless) or jpeg (lossy, see quality).", examples=["png"]),
]
Quality = Annotated[
    int,
    Field(ge=1, le=100, description=f"JPEG quality 1..100 (default {DEFAULT_QUALITY}); only with format jpeg.", examples=[DEFAULT_QUALITY]),
]


ModelName = Annotated[
    str | None,
    Field(
        pattern=r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[A-Za-z0-9_.-]+)?$",
        max_length=200,
        description="Which served model: a name, or name:version to insist on a version (404 if another one is loaded). "
        "Default: the server's default model (the first of DCGAN_MODELS). /info lists the models.",
        examples=["dcgan-generator"],
    ),
]


def _quality_only_for_jpeg(quality: int, info: ValidationInfo) -> int:
    """A quality given with another format is a mistake worth a 422, not a setting silently ignored."""
    if info.data.get("format", "png") != "jpeg":
        raise ValueError(f"applies to format jpeg only, not {info.data.get('format', 'png')}")
    return quality


class SampleRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    seed: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_SEED,
            description=f"{SEED_RULE} The images are a function of the seed alone: "
            "latents = numpy.random.default_rng(seed).standard_normal((n, nz), dtype=float32).",
            examples=[42],
        ),
    ]
    n: Annotated[
        int,
        Field(
            ge=1,
            le=SETTINGS.max_n,
            description=f"How many images, 1..{SETTINGS.max_n} (DCGAN_MAX_N). Image i is the same for every n > i.",
            examples=[4],
        ),
    ] = 1
    truncation: Truncation = 1.0
    format: ImageFormat = "png"
    quality: Quality = DEFAULT_QUALITY
    model: ModelName = None

    _jpeg_quality = field_validator("quality")(_quality_only_for_jpeg)


class RawRequest(BaseModel):
    """/sample/raw: the pixels themselves, so no image format."""

    model_config = ConfigDict(strict=True, extra="forbid")

    seed: Annotated[int, SampleRequest.model_fields["seed"]]
    n: Annotated[int, SampleRequest.model_fields["n"]] = 1
    truncation: Truncation = 1.0
    model: ModelName = None


class InterpolateRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    seed_a: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_SEED,
            description=f"{SEED_RULE} The first frame is image 0 of /sample for this seed.",
            examples=[1],
        ),
    ]
    seed_b: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_SEED,
            description=f"{SEED_RULE} The last frame is image 0 of /sample for this seed.",
            examples=[2],
        ),
    ]
    steps: Annotated[
        int,
        Field(
            ge=2,
            le=MAX_STEPS,
            description=f"How many frames, both ends included, 2..{MAX_STEPS}. Frame k has latent "
            "slerp(z_a, z_b, k / (steps - 1)), z = latents_for_seed(seed, 1, nz)[0].",
            examples=[8],
        ),
    ] = 16
    truncation: Truncation = 1.0
    model: ModelName = None


class StripRequest(InterpolateRequest):
    """/interpolate/strip: the frames in one image, in the format asked for."""

    format: ImageFormat = "png"
    quality: Quality = DEFAULT_QUALITY
    model: ModelName = None  # again, so that it stays the last field

    _jpeg_quality = field_validator("quality")(_quality_only_for_jpeg)


class SampleResponse(BaseModel):
    seed: int
    n: int
    model: str = Field(description="BentoML model tag that made the images, name:version")
    width: int
    height: int
    channels: int = Field(description="1 = grayscale images, 3 = RGB images")
    truncation: float = Field(description="the latent scale the images were made with")
    format: str = Field(description="png, webp or jpeg: the format of every image")
    images: list[
        Annotated[
            str,
            Field(
                description="one image file in `format`, base64-encoded (standard alphabet, padded)",
                json_schema_extra={"contentEncoding": "base64"},
            ),
        ]
    ] = Field(description="n base64-encoded images, in latent order")


def example_body(model: type[BaseModel]) -> str:
    """A valid JSON body for a request model, from its fields' examples, optional ones left out: '{"seed": 42, "n": 4}'."""
    return json.dumps({name: field.examples[0] for name, field in model.model_fields.items() if field.default is not None})


def _rule(e: dict, model: type[BaseModel]) -> str:
    """The rule a pydantic error broke, in the API's words (pydantic's own message otherwise)."""
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "int_type":
        return "must be an integer (a JSON number without fraction or exponent; not a boolean or a string)"
    if kind == "float_type":
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "greater_than":
        return f"must be > {ctx['gt']}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind == "value_error":
        return str(ctx.get("error", e["msg"]))  # the validator's own words
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "extra_forbidden":
        return f"is not a field of this request (fields: {', '.join(model.model_fields)})"
    if kind == "model_type":
        return f"must be a JSON object such as {example_body(model)}"
    if kind == "json_invalid":
        return f"is not valid JSON ({e['msg'].removeprefix('Invalid JSON: ')}); send a JSON object such as {example_body(model)}"
    return e["msg"]


def invalid(exc: ValidationError, model: type[BaseModel]) -> HttpError:
    """400 for a body that is not JSON, 422 for JSON that breaks a rule of `model`; both name each field and its rule."""
    details = exc.errors(include_url=False, include_input=False)
    errors = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "rule": _rule(e, model)} for e in details]
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    kind = BadRequest if any(e["type"] == "json_invalid" for e in details) else Unprocessable
    return kind(f"{first['field']} {first['rule']}{more}", errors)


def request_from_json(body: bytes, model: type[BaseModel]) -> BaseModel:
    """Parse and validate a POST body as `model`; raises the 4xx HttpError that names what is wrong."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as e:
        raise invalid(e, model) from None


QUERY_INT = re.compile(r"-?[0-9]+")
QUERY_INT_DIGITS = 30  # more digits than any limit has: such a number is only ever "too large" (or "too small")


def _query_int(text: str) -> int | str:
    """A query value that is an integer, as an int (of any length, without Python's int-conversion limit)."""
    if not QUERY_INT.fullmatch(text):
        return text  # fails the int rule with its own message
    digits = text.lstrip("-").lstrip("0") or "0"
    if len(digits) > QUERY_INT_DIGITS:
        return -(10**QUERY_INT_DIGITS) if text.startswith("-") else 10**QUERY_INT_DIGITS
    return int(text)


def request_from_query(params: dict[str, str], model: type[BaseModel]) -> BaseModel:
    """Parse and validate GET query parameters (strings): the values of integer fields become ints (signed, any length),
    of number fields floats, anything unparsable stays a string and fails its field's rule. So `seed=-1` is "must be
    >= 0" and a 5,000-digit seed is "must be <= ...", never a 500. Raises the 4xx HttpError that names what is wrong."""
    values = {}
    for name, text in params.items():
        kind = model.model_fields[name].annotation if name in model.model_fields else str
        values[name] = _query_int(text) if kind is int else _query_float(text) if kind is float else text
    return request_from_fields(values, model)


def request_from_fields(values: dict, model: type[BaseModel]) -> BaseModel:
    """Validate fields already parsed (Python values) as `model`; raises the 4xx HttpError that names what is wrong."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise invalid(e, model) from None


# A decimal number: the forms a JSON body may give (sign, fraction, exponent), and 1. or .5 as people write them
QUERY_FLOAT = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _query_float(text: str) -> float | str:
    return float(text) if QUERY_FLOAT.fullmatch(text) and len(text) <= QUERY_INT_DIGITS else text
