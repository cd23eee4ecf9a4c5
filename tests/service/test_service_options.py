"""Generation options (truncation, format, quality), GET forms, and seed-addressable caching (ETag, If-None-Match)."""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from contract.latents import latents_for_seed
from contract.pixels import to_uint8
from service.responses import CACHE_CONTROL, etag
from service.schema import RawRequest, SampleRequest

TIMEOUT = 30


def pixels(data: bytes) -> np.ndarray:
    """An image file -> (H, W) uint8 of its first channel (the committed and test models are grayscale)."""
    image = np.asarray(Image.open(io.BytesIO(data)))
    return image if image.ndim == 2 else image[:, :, 0]


def raw(url: str, **query) -> np.ndarray:
    r = httpx.get(f"{url}/sample/raw", params=query, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, np.uint8).reshape(tuple(int(d) for d in r.headers["x-shape"].split(",")))


def onnx_calls(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    return sum(float(v) for v in re.findall(r"^dcgan_generator_batch_images_count(?:\{[^}]*\})? (\S+)", metrics, re.M))


@pytest.fixture(scope="module")
def scaled_reference(service_artifact):
    """Images of psi * latents_for_seed(seed, n), computed here with ONNX Runtime from the artifact."""
    manifest = json.loads((service_artifact / "manifest.json").read_text())
    session = ort.InferenceSession(str(service_artifact / "generator.onnx"), providers=["CPUExecutionProvider"])

    def images(seed: int, n: int, psi: float) -> np.ndarray:
        z = latents_for_seed(seed, n, manifest["model"]["nz"]) * np.float32(psi)
        return to_uint8(session.run(None, {"z": z})[0]).transpose(0, 2, 3, 1)

    return images


def test_truncation_scales_the_latents_and_is_recorded(service_url, scaled_reference):
    got = raw(service_url, seed=11, n=3, truncation=0.5)
    assert np.abs(got.astype(int) - scaled_reference(11, 3, 0.5).astype(int)).max() <= 1
    assert not np.array_equal(got, raw(service_url, seed=11, n=3))  # it changed the images
    assert np.array_equal(got, raw(service_url, seed=11, n=3, truncation=0.5))  # and deterministically
    assert np.array_equal(got[:2], raw(service_url, seed=11, n=2, truncation=0.5))  # prefix property holds
    body = httpx.post(f"{service_url}/sample", json={"seed": 11, "n": 1, "truncation": 0.5}, timeout=TIMEOUT)
    assert body.json()["truncation"] == 0.5 and "x-truncation" not in body.headers  # JSON says it in its body
    assert httpx.get(f"{service_url}/sample/raw", params={"seed": 11, "truncation": 0.5}, timeout=TIMEOUT).headers["x-truncation"] == "0.5"
    assert np.array_equal(pixels(base64.b64decode(body.json()["images"][0])), got[0, :, :, 0])
    frames = httpx.post(
        f"{service_url}/interpolate/strip", json={"seed_a": 11, "seed_b": 12, "steps": 2, "truncation": 0.5}, timeout=TIMEOUT
    )
    strip = pixels(frames.content)
    h = got.shape[1]
    assert np.array_equal(strip[2 : 2 + h, 2 : 2 + h], got[0, :, :, 0])  # frame 0 is the seed's truncated image 0


@pytest.mark.parametrize(
    ("file_format", "media_type", "lossless"), [("png", "image/png", True), ("webp", "image/webp", True), ("jpeg", "image/jpeg", False)]
)
def test_formats_of_the_image_routes(service_url, file_format, media_type, lossless):
    reference = raw(service_url, seed=21, n=4)[:, :, :, 0]
    body = httpx.get(f"{service_url}/sample", params={"seed": 21, "n": 4, "format": file_format}, timeout=TIMEOUT)
    assert body.status_code == 200 and body.json()["format"] == file_format
    decoded = np.stack([pixels(base64.b64decode(s)) for s in body.json()["images"]])
    worst = np.abs(decoded.astype(int) - reference.astype(int)).max()
    assert worst == 0 if lossless else 0 < worst < 64, worst
    grid = httpx.post(f"{service_url}/sample/grid", json={"seed": 21, "n": 4, "format": file_format}, timeout=TIMEOUT)
    assert grid.headers["content-type"] == media_type and Image.open(io.BytesIO(grid.content)).format == file_format.upper()
    again = httpx.post(f"{service_url}/sample/grid", json={"seed": 21, "n": 4, "format": file_format}, timeout=TIMEOUT)
    assert again.content == grid.content


def test_jpeg_quality_changes_the_bytes_and_is_refused_elsewhere(service_url):
    low = httpx.get(f"{service_url}/sample/grid", params={"seed": 2, "n": 4, "format": "jpeg", "quality": 10}, timeout=TIMEOUT)
    high = httpx.get(f"{service_url}/sample/grid", params={"seed": 2, "n": 4, "format": "jpeg", "quality": 95}, timeout=TIMEOUT)
    assert low.status_code == high.status_code == 200 and len(low.content) < len(high.content)
    for path, body, field in (
        ("/sample", {"seed": 2, "quality": 50}, "quality"),
        ("/sample", {"seed": 2, "format": "gif"}, "format"),
        ("/sample", {"seed": 2, "format": "jpeg", "quality": 0}, "quality"),
        ("/sample/raw", {"seed": 2, "format": "png"}, "format"),
        ("/interpolate", {"seed_a": 1, "seed_b": 2, "format": "png"}, "format"),
        ("/sample", {"seed": 2, "truncation": 0}, "truncation"),
        ("/sample", {"seed": 2, "truncation": 1.5}, "truncation"),
        ("/sample", {"seed": 2, "truncation": "0.5"}, "truncation"),
    ):
        r = httpx.post(f"{service_url}{path}", json=body, timeout=TIMEOUT)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, (path, body, r.text)
        assert "etag" not in r.headers and "cache-control" not in r.headers  # never on errors


def test_every_generation_route_answers_get_like_post(service_url):
    for path, query in (
        ("/sample", {"seed": 4, "n": 2}),
        ("/sample/raw", {"seed": 4, "n": 2}),
        ("/sample/grid", {"seed": 4, "n": 2}),
        ("/interpolate", {"seed_a": 4, "seed_b": 5, "steps": 3}),
        ("/interpolate/apng", {"seed_a": 4, "seed_b": 5, "steps": 3}),
        ("/interpolate/strip", {"seed_a": 4, "seed_b": 5, "steps": 3}),
    ):
        got = httpx.get(f"{service_url}{path}", params=query, timeout=TIMEOUT)
        posted = httpx.post(f"{service_url}{path}", json=query, timeout=TIMEOUT)
        assert got.status_code == posted.status_code == 200, (path, got.text)
        assert got.content == posted.content and got.headers["etag"] == posted.headers["etag"], path


def test_etag_names_model_route_and_request(service_url):
    info = httpx.get(f"{service_url}/info", timeout=TIMEOUT).json()
    r = httpx.get(f"{service_url}/sample/raw", params={"seed": 8, "n": 2}, timeout=TIMEOUT)
    assert r.headers["etag"] == etag(info["model"], "/sample/raw", RawRequest(seed=8, n=2))
    assert r.headers["cache-control"] == CACHE_CONTROL
    base = SampleRequest(seed=8, n=2)
    tags = {
        etag(info["model"], "/sample", base),
        etag(info["model"], "/sample/grid", base),  # route
        etag(info["model"], "/sample", SampleRequest(seed=9, n=2)),  # seed
        etag(info["model"], "/sample", SampleRequest(seed=8, n=3)),  # n
        etag(info["model"], "/sample", SampleRequest(seed=8, n=2, format="webp")),  # format
        etag(info["model"], "/sample", SampleRequest(seed=8, n=2, truncation=0.7)),  # truncation
        etag("dcgan-generator:another", "/sample", base),  # a new model changes every ETag
    }
    assert len(tags) == 7 and all(re.fullmatch(r'"[0-9a-f]{32}"', t) for t in tags)
    assert etag(info["model"], "/sample", SampleRequest(seed=8, n=2, format="png")) in tags  # defaults spelled out: same


def test_a_matching_if_none_match_skips_the_model(service_url):
    url, query = f"{service_url}/sample/grid", {"seed": 31, "n": 9}
    first = httpx.get(url, params=query, timeout=TIMEOUT)
    tag = first.headers["etag"]
    calls = onnx_calls(service_url)
    for value in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        cached = httpx.get(url, params=query, headers={"If-None-Match": value}, timeout=TIMEOUT)
        assert cached.status_code == 304 and cached.content == b"", value
        assert cached.headers["etag"] == tag and cached.headers["cache-control"] == CACHE_CONTROL
    head = httpx.head(url, params=query, headers={"If-None-Match": tag}, timeout=TIMEOUT)
    posted = httpx.post(url, json=query, headers={"If-None-Match": tag}, timeout=TIMEOUT)
    assert head.status_code == 304
    assert posted.status_code == 412 and "etag" not in posted.headers and "If-None-Match" in posted.json()["error"]
    assert onnx_calls(service_url) == calls  # none of these ran the model
    other = httpx.get(url, params=query, headers={"If-None-Match": '"not-this-one"'}, timeout=TIMEOUT)
    assert other.status_code == 200 and other.content == first.content and onnx_calls(service_url) == calls + 1
