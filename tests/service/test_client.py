"""dcgan_client against a real `bentoml serve`: the images are the service's, and cached answers cost no model call."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from dcgan_client import Client, ServiceError


def onnx_calls(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(r"^dcgan_generator_batch_images_count(?:\{[^}]*\})? (\S+)", metrics, re.M))


def test_images_are_the_service_s(service_url):
    client = Client(service_url)
    pixels = client.sample_array(42, n=3)
    raw = httpx.post(f"{service_url}/sample/raw", json={"seed": 42, "n": 3}, timeout=30).content
    assert pixels.dtype == np.uint8 and pixels.tobytes() == raw
    images = client.sample(42, n=3)
    assert len(images) == 3 and all(np.array_equal(np.asarray(im), p[:, :, 0]) for im, p in zip(images, pixels, strict=True))
    webp = client.sample(42, n=3, format="webp")  # lossless: the same pixels
    assert [im.format for im in webp] == ["WEBP"] * 3 and np.array_equal(np.asarray(webp[0].convert("L")), pixels[0, :, :, 0])
    assert client.sample(42, n=1, format="jpeg", quality=50)[0].format == "JPEG"
    assert np.array_equal(client.sample_array(42, n=2, truncation=0.5), client.sample_array(42, n=2, truncation=0.5))
    frames = client.interpolate(42, 43, steps=4)
    assert len(frames) == 4 and np.array_equal(np.asarray(frames[0].convert("L")), pixels[0, :, :, 0])
    assert client.grid(42, n=4).size == np.asarray(client.grid(42, n=4)).shape[1::-1]
    assert client.info()["model"].startswith("dcgan-generator:")


def test_errors_raise_with_the_service_s_message(service_url):
    with pytest.raises(ServiceError, match=r"HTTP 422: n must be <= 64") as e:
        Client(service_url).sample(1, n=65)
    assert e.value.status == 422
    with pytest.raises(ServiceError, match="cannot reach"):
        Client("http://127.0.0.1:9", retries=1).info()  # nothing listens on port 9


def test_the_cache_revalidates_without_a_model_call(service_url):
    client = Client(service_url, cache_size=4)
    first = client.sample_array(77, n=4)
    calls = onnx_calls(service_url)
    again = client.sample_array(77, n=4)
    assert np.array_equal(first, again) and client.stats["not_modified"] == 1 and onnx_calls(service_url) == calls
    uncached = Client(service_url)
    uncached.sample_array(77, n=4)
    assert uncached.stats["not_modified"] == 0 and onnx_calls(service_url) == calls + 1
