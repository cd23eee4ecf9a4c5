"""dcgan_client against a real `bentoml serve`: the images are the service's, cached answers cost no model call,
connections are kept alive, and the client installs and works on its own (client/, without the server's packages)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from PIL import Image

from common.paths import REPO_ROOT as ROOT
from dcgan_client import AsyncClient, Client, ServiceError
from dcgan_client.connections import retry_after_s

UVICORN_KEEP_ALIVE_S = 5  # uvicorn's default timeout_keep_alive, which BentoML keeps


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


def test_connections_are_kept_alive_and_reused(service_url):
    with Client(service_url) as client:
        for seed in range(5):
            client.sample_array(seed)
        client.info()
        assert client.stats["requests"] == 6 and client.connections_opened == 1


def test_the_async_client_gives_the_same_images(service_url):
    async def both() -> list[np.ndarray]:
        client = AsyncClient(service_url)
        try:
            return await asyncio.gather(*(client.sample_array(seed, n=2) for seed in (5, 6, 7)))
        finally:
            await client.close()

    arrays = asyncio.run(both())
    assert all(np.array_equal(a, Client(service_url).sample_array(seed, n=2)) for a, seed in zip(arrays, (5, 6, 7)))


def test_retry_after_in_seconds_or_as_an_http_date():
    now = datetime(2026, 12, 6, 18, 30, 0, tzinfo=UTC)
    assert retry_after_s("3", now=now) == 3.0
    assert retry_after_s("Sun, 06 Dec 2026 18:30:10 GMT", now=now) == 10.0
    assert retry_after_s("Sun, 06 Dec 2026 18:29:00 GMT", now=now) == 0.0  # already past: at once
    assert retry_after_s("3600", now=now) == 60.0  # waited out at most a minute
    assert retry_after_s(None) == retry_after_s("soon") == retry_after_s("-1") == 1.0  # absent or unreadable: 1 s


def test_the_client_installs_alone_and_works_without_the_server_s_packages(service_url, tmp_path):
    """client/ as its own distribution: built, installed into a fresh venv with only its dependencies (numpy, Pillow, from
    the package index pip is set up for), and used against the running service."""
    source, wheels, venv = tmp_path / "client", tmp_path / "wheels", tmp_path / "venv"
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))  # builds write here
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=120)
    (wheel,) = wheels.glob("dcgan_client-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True, timeout=120)
    python = str(venv / "bin" / "python")
    installed = subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    listed = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True)
    names = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert names <= {"dcgan-client", "numpy", "pillow", "pip", "setuptools", "wheel"}, names
    script = (
        "import sys, importlib.util\n"
        "from dcgan_client import Client\n"
        "assert not any(importlib.util.find_spec(m) for m in ('bentoml', 'onnxruntime', 'torch', 'service', 'contract'))\n"
        "pixels = Client(sys.argv[1]).sample_array(42, n=3)\n"
        "sys.stdout.buffer.write(pixels.tobytes())\n"
    )
    out = subprocess.run([python, "-I", "-c", script, service_url], capture_output=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout == httpx.post(f"{service_url}/sample/raw", json={"seed": 42, "n": 3}, timeout=30).content


def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry(service_url):
    """uvicorn closes a keep-alive connection after 5 s idle: the next call finds it closed, and opens a new one."""
    with Client(service_url, retries=0) as client:
        first = client.sample_array(3)
        time.sleep(UVICORN_KEEP_ALIVE_S + 1)
        assert np.array_equal(client.sample_array(3), first)
        assert client.connections_opened == 2 and client.stats["retries"] == 0


# ---- a server of several models (DCGAN_MODELS=dcgan-generator,dcgan-other) ----


def raw_pixels(url: str, **params) -> httpx.Response:
    r = httpx.get(f"{url}/sample/raw", params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r


def test_a_call_names_its_model_and_gets_that_model_s_images(two_models):
    url = two_models.url
    client = Client(url)
    other = client.sample_array(42, n=2, model="dcgan-other")
    answer = raw_pixels(url, seed=42, n=2, model="dcgan-other")
    assert other.tobytes() == answer.content and answer.headers["x-model"].startswith("dcgan-other:")
    default = client.sample_array(42, n=2)  # no model: the server's default
    assert default.tobytes() == raw_pixels(url, seed=42, n=2).content
    assert default.shape == other.shape and not np.array_equal(default, other)  # same seed, other weights

    # The client's model is every call's; a call's own model= overrides it.
    mine = Client(url, model="dcgan-other")
    assert np.array_equal(mine.sample_array(42, n=2), other)
    assert np.array_equal(mine.sample_array(42, n=2, model="dcgan-generator"), default)
    assert all(np.array_equal(np.asarray(im), p[:, :, 0]) for im, p in zip(mine.sample(42, n=2), other))
    frames = client.interpolate(42, 43, steps=3, model="dcgan-other")
    assert len(frames) == 3 and np.array_equal(np.asarray(frames[0].convert("L")), other[0, :, :, 0])
    grid = httpx.get(f"{url}/sample/grid", params={"seed": 42, "n": 2, "model": "dcgan-other"}, timeout=30).content
    assert mine.grid(42, n=2).tobytes() == Image.open(io.BytesIO(grid)).tobytes()
    assert mine.grid(42, n=2).tobytes() != client.grid(42, n=2).tobytes()

    async def awaited() -> tuple[np.ndarray, np.ndarray]:
        async_client = AsyncClient(url, model="dcgan-other")
        try:
            return await async_client.sample_array(42, n=2), await async_client.sample_array(42, n=2, model="dcgan-generator")
        finally:
            await async_client.close()

    async_other, async_default = asyncio.run(awaited())
    assert np.array_equal(async_other, other) and np.array_equal(async_default, default)


def test_models_lists_the_served_models_default_first(two_models):
    client = Client(two_models.url)
    models = client.models()
    assert [m["name"] for m in models] == ["dcgan-generator", "dcgan-other"]
    assert models == client.info()["models"] and client.info()["model"] == models[0]["tag"]
    other = models[1]
    assert other["tag"] == f"dcgan-other:{other['version']}"
    # name:version insists on that version, and gets the same images as the bare name.
    assert np.array_equal(client.sample_array(7, model=other["tag"]), client.sample_array(7, model="dcgan-other"))
    assert [m["name"] for m in asyncio.run(AsyncClient(two_models.url).models())] == ["dcgan-generator", "dcgan-other"]


def test_the_cache_keeps_each_model_s_answer_apart(two_models):
    client = Client(two_models.url, cache_size=4)
    default, other = client.sample_array(11, n=2), client.sample_array(11, n=2, model="dcgan-other")
    assert not np.array_equal(default, other) and client.stats["not_modified"] == 0  # not the default's cached answer
    assert np.array_equal(client.sample_array(11, n=2, model="dcgan-other"), other)
    assert np.array_equal(client.sample_array(11, n=2), default)
    assert client.stats["not_modified"] == 2 and client.stats["requests"] == 4


def test_an_unknown_model_raises_naming_the_served_models(two_models):
    client = Client(two_models.url, cache_size=4)
    tags = [m["tag"] for m in client.models()]
    with pytest.raises(ServiceError) as e:
        client.sample_array(1, model="dcgan-missing")
    assert e.value.status == 404 and client.stats["retries"] == 0  # an answer, not an outage: asked once
    message = e.value.message
    assert "'dcgan-missing'" in message and all(tag in message for tag in tags), message
    assert str(e.value) == f"HTTP 404: {message}" and "\n" not in message and "Traceback" not in message
    with pytest.raises(ServiceError, match=r"HTTP 404: model 'dcgan-other:nope' is not loaded"):
        Client(two_models.url, model="dcgan-other:nope").sample(1)  # a version the server does not serve
