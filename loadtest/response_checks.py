"""What the load test sends and what it accepts, kept free of locust (importing locust monkey-patches the process).

parse_n_mix("1:3,16:1") -> ([1, 16], [3.0, 1.0])     the mix of images per request
problem_with(body, content_type, seed, n[, model]) -> None    or why a 200 response is malformed (or from another model)
v2_body(seed, n), problem_with_v2(body, n)          the same over the Open Inference Protocol (the Triton peer)
outcome(status, headers, problem) -> (OK | REFUSED | FAILED, reason, retry_after_s)   what a response counts as
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json

PNG_BASE64_PREFIX = "iVBORw0KGgo"  # base64 of the 8-byte PNG signature \x89PNG\r\n\x1a\n
MAX_SEED = 2**63 - 1
OK, REFUSED, FAILED = "ok", "refused", "failed"  # the three outcomes of a request
OUTCOMES = (OK, REFUSED, FAILED)
REFUSAL_STATUSES = (429, 503)  # with Retry-After: the server shedding load by design, not an error


def parse_n_mix(text: str) -> tuple[list[int], list[float]]:
    """ "1:3,16:1" -> ([1, 16], [3.0, 1.0]); a missing weight is 1."""
    ns, weights = [], []
    for item in text.split(","):
        n_text, _, weight_text = item.strip().partition(":")
        try:
            n, weight = int(n_text), float(weight_text or 1)
        except ValueError:
            raise ValueError(f"--n-mix item {item.strip()!r} is not n or n:weight (e.g. 1:3,16:1)") from None
        if n < 1 or weight <= 0:
            raise ValueError(f"--n-mix item {item.strip()!r}: n must be >= 1 and weight > 0")
        ns.append(n)
        weights.append(weight)
    return ns, weights


def problem_with(body: bytes, content_type: str, seed: int, n: int, model: str | None = None) -> str | None:
    """Why a 200 response to {"seed": seed, "n": n} (with "model": model, if given) is malformed, or None if it is
    well-formed; asked for a model (a name, or name:version), the answer's `model` field must be that model's tag."""
    if not content_type.startswith("application/json"):
        return f"content type {content_type!r}, expected application/json"
    try:
        data = json.loads(body)
    except ValueError:
        return "body is not JSON"
    if not isinstance(data, dict):
        return "body is not a JSON object"
    if data.get("seed") != seed or data.get("n") != n:
        return f"echoed seed/n {data.get('seed')}/{data.get('n')}, expected {seed}/{n}"
    if model is not None and not answered_by(data.get("model"), model):
        return f"answered by model {data.get('model')!r}, asked for {model!r}"
    images = data.get("images")
    return _problem_with_images(images, n)


def answered_by(tag, model: str) -> bool:
    """Whether an answer's model tag (name:version) is the model asked for: a name (any version) or name:version."""
    return isinstance(tag, str) and (tag == model or (":" not in model and tag.startswith(f"{model}:")))


def _problem_with_images(images, n: int) -> str | None:
    if not isinstance(images, list) or len(images) != n:
        return f"{len(images) if isinstance(images, list) else 'no'} images, expected {n}"
    if not all(isinstance(image, str) and image.startswith(PNG_BASE64_PREFIX) for image in images):
        return "an image is not a base64 PNG"
    return None


def v2_body(seed: int, n: int) -> dict:
    """An Open Inference Protocol (KServe v2) request for (seed, n): INT64 inputs "seed" and "n" of shape [1, 1]."""
    return {"inputs": [{"name": name, "shape": [1, 1], "datatype": "INT64", "data": [value]} for name, value in (("seed", seed), ("n", n))]}


def problem_with_v2(body: bytes, n: int) -> str | None:
    """Why a 200 answer to v2_body(seed, n) is malformed: it must hold a BYTES output "images" [1, n] of base64 PNGs."""
    try:
        outputs = {out["name"]: out for out in json.loads(body)["outputs"]}
    except (ValueError, KeyError, TypeError):
        return "body is not a v2 inference response"
    images = outputs.get("images", {})
    if images.get("shape") != [1, n]:
        return f"output images has shape {images.get('shape')}, expected [1, {n}]"
    return _problem_with_images(images.get("data"), n)


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header in seconds (RFC 9110: delay-seconds or an HTTP date), or None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0) if when.tzinfo else None


def outcome(status: int, retry_after: str | None, problem: str | None) -> tuple[str, str, float | None]:
    """(outcome, reason, seconds to wait) of one response.

    OK: HTTP 200 and a well-formed body (`problem` None). REFUSED: 429 or 503 with a readable Retry-After, the
    server shedding load as designed; the client should wait that long. FAILED: anything else (status 0 is a
    connection error), with its reason.
    """
    wait = retry_after_s(retry_after)
    if status == 200:
        return (OK, "", None) if problem is None else (FAILED, problem, None)
    if status in REFUSAL_STATUSES and wait is not None:
        return REFUSED, f"HTTP {status}", wait
    if status in REFUSAL_STATUSES:
        return FAILED, f"HTTP {status} without a Retry-After header", None
    return FAILED, f"HTTP {status}", None
