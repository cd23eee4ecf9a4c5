"""A Python client for the DCGAN service: standard library, numpy and Pillow only (no torch, no BentoML).
A distribution of its own (`pip install ./client` from the repository), independent of the server's packages.

    from dcgan_client import Client, AsyncClient

    client = Client("http://127.0.0.1:3000")          # timeout=30, retries=5, api_key=None, cache_size=0, model=None
    images = client.sample(42, n=4)                    # list of PIL images (format="png"|"webp"|"jpeg", truncation=1.0)
    pixels = client.sample_array(42, n=4)              # (4, H, W, C) uint8, the raw bytes of /sample/raw
    frames = client.interpolate(1, 2, steps=8)         # list of PIL images, seed 1's image first, seed 2's last
    grid = client.grid(42, n=16)                       # one PIL image
    other = client.sample_array(42, model="dcgan-other")   # another served model ("name" or "name:version")
    names = [m["name"] for m in client.models()]       # the served models (/info's "models"), the default first
    images = await AsyncClient("http://127.0.0.1:3000").sample(42, n=4)   # the same calls, awaited

Every generating call takes `model=`: a name or name:version of a model the server serves (DCGAN_MODELS);
Client(model=...) sets it for every call, and None (the default) leaves it to the server, which uses its default
model. A model the server does not serve raises ServiceError (HTTP 404) naming the models it does serve.

Requests use the service's GET routes over kept-alive connections (connections.py), shared by every thread that
uses the client. A 429 or 503 is retried after the server's Retry-After, in seconds or as an HTTP-date (at most
`retries` times), and so is a refused or reset connection (a pod restarting), after a growing pause; any other
error raises ServiceError with the service's one-line message. With `cache_size` > 0 the client keeps that many
responses and revalidates them with If-None-Match: a 304 costs the server no model call. Every answer is a
pure function of (model, request), so a cached one is what the server would send again for the same model.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import threading
import time
import urllib.parse
from collections import OrderedDict

import numpy as np
from PIL import Image, ImageSequence

from dcgan_client.connections import Connections, retry_after_s

__all__ = ["AsyncClient", "Client", "ServiceError"]
RETRY_STATUSES = (429, 503)
CONNECTION_PAUSES_S = (0.2, 0.5, 1.0, 2.0, 4.0)


class ServiceError(Exception):
    """The service answered with an error: `status` and its one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    def __init__(
        self,
        url: str = "http://127.0.0.1:3000",
        *,
        timeout: float = 30.0,
        retries: int = 5,
        api_key: str | None = None,
        cache_size: int = 0,
        model: str | None = None,
    ) -> None:
        self.url, self.timeout, self.retries, self.api_key = url.rstrip("/"), timeout, retries, api_key
        self.cache_size, self.model = cache_size, model  # model: every call's, unless the call names one
        self._connections = Connections(self.url, timeout)
        # path and query (the model included, where named) -> (etag, headers, body)
        self._cache: OrderedDict[str, tuple[str, dict[str, str], bytes]] = OrderedDict()
        self._lock = threading.Lock()  # the cache and the counters, shared by the calling threads
        self.stats = {"requests": 0, "retries": 0, "not_modified": 0}

    @property
    def connections_opened(self) -> int:
        """Connections opened so far: one per thread that called at the same time, not one per request."""
        return self._connections.opened

    def close(self) -> None:
        """Close the kept-alive connections (the client opens new ones if called again)."""
        self._connections.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sample(
        self,
        seed: int,
        n: int = 1,
        *,
        truncation: float = 1.0,
        format: str = "png",
        quality: int | None = None,
        model: str | None = None,
    ) -> list[Image.Image]:
        """n images for a seed."""
        query = {"seed": seed, "n": n, "truncation": truncation, "format": format, **({"quality": quality} if quality else {})}
        body = json.loads(self._generate("/sample", query, model)[1])
        return [Image.open(io.BytesIO(base64.b64decode(data))) for data in body["images"]]

    def sample_array(self, seed: int, n: int = 1, *, truncation: float = 1.0, model: str | None = None) -> np.ndarray:
        """The n images as one (n, H, W, C) uint8 array."""
        headers, body = self._generate("/sample/raw", {"seed": seed, "n": n, "truncation": truncation}, model)
        shape = tuple(int(d) for d in headers["x-shape"].split(","))
        return np.frombuffer(body, dtype=np.uint8).reshape(shape)

    def grid(
        self,
        seed: int,
        n: int = 16,
        *,
        truncation: float = 1.0,
        format: str = "png",
        quality: int | None = None,
        model: str | None = None,
    ) -> Image.Image:
        query = {"seed": seed, "n": n, "truncation": truncation, "format": format, **({"quality": quality} if quality else {})}
        return Image.open(io.BytesIO(self._generate("/sample/grid", query, model)[1]))

    def interpolate(
        self, seed_a: int, seed_b: int, steps: int = 16, *, truncation: float = 1.0, model: str | None = None
    ) -> list[Image.Image]:
        """The frames of a spherical walk from seed_a's image 0 to seed_b's (decoded from the lossless APNG)."""
        query = {"seed_a": seed_a, "seed_b": seed_b, "steps": steps, "truncation": truncation}
        body = self._generate("/interpolate/apng", query, model)[1]
        return [frame.copy() for frame in ImageSequence.Iterator(Image.open(io.BytesIO(body)))]

    def info(self) -> dict:
        return json.loads(self._get("/info", {})[1])

    def models(self) -> list[dict]:
        """The served models, the default first: /info's "models" (name, tag, version, provider, image_size, ...)."""
        return self.info()["models"]

    def _generate(self, path: str, query: dict, model: str | None) -> tuple[dict[str, str], bytes]:
        """A generation route's answer, from the model the call names, else the client's, else the server's default."""
        model = model if model is not None else self.model
        return self._get(path, {**query, "model": model} if model is not None else query)

    def _count(self, stat: str) -> None:
        with self._lock:
            self.stats[stat] += 1

    def _get(self, path: str, query: dict) -> tuple[dict[str, str], bytes]:
        url = path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with self._lock:
            cached = self._cache.get(url)
        headers = {"Accept": "*/*", **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        if cached:
            headers["If-None-Match"] = cached[0]
        status, answer_headers, body = self._send(url, headers)
        if status == 304 and cached:
            self._count("not_modified")
            with self._lock:
                if url in self._cache:
                    self._cache.move_to_end(url)
            return cached[1], cached[2]
        if status != 200:
            try:
                message = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                message = body[:200].decode(errors="replace")
            raise ServiceError(status, message)
        if self.cache_size and "etag" in answer_headers:
            with self._lock:
                self._cache[url] = (answer_headers["etag"], answer_headers, body)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return answer_headers, body

    def _send(self, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body), retrying overload (after Retry-After) and connection failures."""
        attempt = 0
        while True:
            self._count("requests")
            try:
                status, answer_headers, body = self._connections.get(url, headers)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out: no answer at all
                if attempt == self.retries:
                    raise ServiceError(0, f"cannot reach {self.url}: {e}") from None
                pause = CONNECTION_PAUSES_S[min(attempt, len(CONNECTION_PAUSES_S) - 1)]
            else:
                if status not in RETRY_STATUSES or attempt == self.retries:
                    return status, answer_headers, body
                pause = retry_after_s(answer_headers.get("retry-after"))
            attempt += 1
            self._count("retries")
            time.sleep(pause)


class AsyncClient:
    """Client's calls as coroutines, for asyncio programs: each runs the blocking call in a worker thread
    (asyncio.to_thread), over the same kept-alive connections. `AsyncClient(url, **options)` takes Client's options
    (model= among them), and each call Client's keywords; `.client` is the Client underneath (its stats, close())."""

    def __init__(self, url: str = "http://127.0.0.1:3000", *, model: str | None = None, **options) -> None:
        self.client = Client(url, model=model, **options)

    async def sample(self, seed: int, n: int = 1, **options) -> list[Image.Image]:
        return await asyncio.to_thread(self.client.sample, seed, n, **options)

    async def sample_array(self, seed: int, n: int = 1, **options) -> np.ndarray:
        return await asyncio.to_thread(self.client.sample_array, seed, n, **options)

    async def grid(self, seed: int, n: int = 16, **options) -> Image.Image:
        return await asyncio.to_thread(self.client.grid, seed, n, **options)

    async def interpolate(self, seed_a: int, seed_b: int, steps: int = 16, **options) -> list[Image.Image]:
        return await asyncio.to_thread(self.client.interpolate, seed_a, seed_b, steps, **options)

    async def info(self) -> dict:
        return await asyncio.to_thread(self.client.info)

    async def models(self) -> list[dict]:
        return await asyncio.to_thread(self.client.models)

    async def close(self) -> None:
        self.client.close()
