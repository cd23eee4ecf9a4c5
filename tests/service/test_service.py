"""The HTTP API of `bentoml serve service:svc`, against one real server (see conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
from helpers import metric
from PIL import Image

from contract.latents import latents_for_seed
from contract.pixels import to_uint8

TIMEOUT = 60


def post(url: str, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=TIMEOUT, **kwargs)


def raw_images(url: str, seed: int, n: int) -> np.ndarray:
    """(n, H, W, C) uint8 from POST /sample/raw, shaped by its X-Shape header."""
    r = post(url, "/sample/raw", {"seed": seed, "n": n})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    shape = tuple(int(d) for d in r.headers["x-shape"].split(","))
    return np.frombuffer(r.content, dtype=np.uint8).reshape(shape)


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, C) uint8."""
    image = np.asarray(Image.open(io.BytesIO(data)))
    return image[:, :, None] if image.ndim == 2 else image


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def manifest(service_artifact) -> dict:
    return json.loads((service_artifact / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(service_artifact, manifest):
    """What the service must return, computed here with ONNX Runtime from the artifact file and the documented contract."""
    session = ort.InferenceSession(str(service_artifact / "generator.onnx"), providers=["CPUExecutionProvider"])

    def images(seed: int, n: int) -> np.ndarray:  # (n, H, W, C) uint8
        (out,) = session.run(None, {"z": latents_for_seed(seed, n, manifest["model"]["nz"])})
        return to_uint8(out).transpose(0, 2, 3, 1)

    return images


def test_sample_returns_n_pngs_of_the_model(service_url, manifest):
    r = post(service_url, "/sample", {"seed": 42, "n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    m = manifest["model"]
    assert (body["seed"], body["n"], body["width"], body["height"], body["channels"]) == (
        42,
        3,
        m["image_size"],
        m["image_size"],
        m["channels"],
    )
    assert re.fullmatch(r"dcgan-generator:\w+", body["model"])
    assert len(body["images"]) == 3
    for encoded in body["images"]:
        image = Image.open(io.BytesIO(base64.b64decode(encoded, validate=True)))
        assert (image.format, image.size, image.mode) == ("PNG", (m["image_size"], m["image_size"]), "L" if m["channels"] == 1 else "RGB")


def test_n_defaults_to_one(service_url):
    r = post(service_url, "/sample", {"seed": 7})
    assert r.status_code == 200, r.text
    assert r.json()["n"] == 1 and len(r.json()["images"]) == 1


def test_pixels_are_the_documented_function_of_the_seed(service_url, reference):
    """seed -> default_rng latents -> generator.onnx -> round((x+1)*127.5), computed independently here."""
    for seed, n in ((0, 1), (42, 5), (2**63 - 1, 2)):
        assert max_level_diff(raw_images(service_url, seed, n), reference(seed, n)) <= 1


def test_same_request_gives_identical_bytes(service_url):
    first = post(service_url, "/sample", {"seed": 123, "n": 4})
    second = post(service_url, "/sample", {"seed": 123, "n": 4})
    assert first.status_code == second.status_code == 200
    assert first.json()["images"] == second.json()["images"]


def test_different_seeds_give_different_images(service_url):
    assert not np.array_equal(raw_images(service_url, 1, 2), raw_images(service_url, 2, 2))


def test_image_i_is_the_same_for_every_n_above_i(service_url):
    assert np.array_equal(latents_for_seed(9, 3, 100), latents_for_seed(9, 8, 100)[:3])  # the contract itself
    short, long = raw_images(service_url, 9, 3), raw_images(service_url, 9, 8)
    assert max_level_diff(short, long[:3]) <= 1


def test_json_grid_and_raw_forms_hold_the_same_pixels(service_url):
    seed, n = 5, 5
    raw = raw_images(service_url, seed, n)
    body = post(service_url, "/sample", {"seed": seed, "n": n}).json()
    pngs = np.stack([decode_png(base64.b64decode(s)) for s in body["images"]])
    assert max_level_diff(pngs, raw) <= 1

    r = post(service_url, "/sample/grid", {"seed": seed, "n": n})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    grid = decode_png(r.content)
    _, h, w, _ = raw.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    assert grid.shape[:2] == (rows * (h + 2) + 2, cols * (w + 2) + 2)
    for i in range(n):
        y, x = 2 + (i // cols) * (h + 2), 2 + (i % cols) * (w + 2)
        assert max_level_diff(grid[y : y + h, x : x + w], raw[i]) <= 1


def test_grid_opens_from_a_browser_address_bar(service_url):
    r = httpx.get(f"{service_url}/sample/grid", params={"seed": 5, "n": 4}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == post(service_url, "/sample/grid", {"seed": 5, "n": 4}).content


def test_raw_form_is_uint8_nhwc_with_its_shape_in_headers(service_url, manifest):
    r = post(service_url, "/sample/raw", {"seed": 3, "n": 2})
    m = manifest["model"]
    assert r.headers["x-shape"] == f"2,{m['image_size']},{m['image_size']},{m['channels']}"
    assert len(r.content) == 2 * m["image_size"] ** 2 * m["channels"]
    assert (r.headers["x-seed"], r.headers["x-n"]) == ("3", "2")


# (body, expected status, the field the error names)
BAD_BODIES = [
    ({}, 422, "seed"),
    ({"n": 2}, 422, "seed"),
    ({"seed": None}, 422, "seed"),
    ({"seed": "1"}, 422, "seed"),
    ({"seed": 1.0}, 422, "seed"),
    ({"seed": 1.5}, 422, "seed"),
    ({"seed": True}, 422, "seed"),
    ({"seed": [1]}, 422, "seed"),
    ({"seed": -1}, 422, "seed"),
    ({"seed": 2**63}, 422, "seed"),
    ({"seed": 10**30}, 422, "seed"),
    ({"seed": 1, "n": 0}, 422, "n"),
    ({"seed": 1, "n": -3}, 422, "n"),
    ({"seed": 1, "n": 65}, 422, "n"),
    ({"seed": 1, "n": 2.0}, 422, "n"),
    ({"seed": 1, "n": False}, 422, "n"),
    ({"seed": 1, "count": 4}, 422, "count"),
    ([1, 2], 422, "body"),
    ("seed", 422, "body"),
]


@pytest.mark.parametrize("path", ["/sample", "/sample/grid", "/sample/raw"])
@pytest.mark.parametrize(("body", "status", "field"), BAD_BODIES, ids=[json.dumps(b) for b, _, _ in BAD_BODIES])
def test_invalid_fields_get_a_4xx_naming_the_field(service_url, path, body, status, field):
    r = post(service_url, path, body)
    assert r.status_code == status, r.text
    error = r.json()
    assert error["error"].startswith(f"{field} ")
    assert field in {e["field"] for e in error["errors"]}


@pytest.mark.parametrize(
    ("content", "headers", "status", "says"),
    [
        (b"not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        (b'{"seed": 1', {"Content-Type": "application/json"}, 400, "not valid JSON"),
        (b"", {"Content-Type": "application/json"}, 422, "seed is required"),
        (b'{"seed": 1}', {"Content-Type": "text/plain"}, 415, "application/json"),
        (b"seed=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        (
            b'--x\r\nContent-Disposition: form-data; name="seed"\r\n\r\n1\r\n--x--\r\n',
            {"Content-Type": "multipart/form-data; boundary=x"},
            415,
            "application/json",
        ),
        (b'{"seed": 1}', {"Content-Type": "application/vnd.bentoml+pickle"}, 415, "application/json"),
        (b'{"seed": 1, "n": 1}' + b" " * 5000, {"Content-Type": "application/json"}, 413, "at most"),
    ],
    ids=["not-json", "truncated-json", "empty", "text-plain", "form", "multipart", "pickle", "oversized"],
)
def test_malformed_bodies_get_a_4xx_json_error(service_url, content, headers, status, says):
    r = httpx.post(f"{service_url}/sample", content=content, headers=headers, timeout=TIMEOUT)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]


def test_oversized_chunked_body_is_refused(service_url):
    def chunks():  # no Content-Length: the guard has to count while reading
        yield b'{"seed": 1, "n": 1'
        for _ in range(100):
            yield b" " * 100
        yield b"}"

    r = httpx.post(f"{service_url}/sample", content=chunks(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 413, r.text


def test_missing_content_type_is_read_as_json(service_url):
    r = httpx.post(f"{service_url}/sample", content=b'{"seed": 1}', timeout=TIMEOUT)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("method", "path"), [("PATCH", "/sample"), ("PUT", "/sample"), ("DELETE", "/sample/raw"), ("PUT", "/sample/grid")])
def test_wrong_method_gets_405_json(service_url, method, path):
    r = httpx.request(method, f"{service_url}{path}", timeout=TIMEOUT)
    assert r.status_code == 405
    assert "POST" in r.headers["allow"] and method in r.json()["error"]


@pytest.mark.parametrize(
    "query", [{}, {"seed": "x"}, {"seed": "-1"}, {"seed": "1", "n": "0"}, {"seed": "1", "n": "1.5"}, {"seed": "1", "m": "2"}]
)
def test_grid_query_is_validated(service_url, query):
    r = httpx.get(f"{service_url}/sample/grid", params=query, timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    assert r.json()["errors"]


@pytest.mark.parametrize(
    ("query", "rule"),
    [
        ({"seed": "-1"}, "seed must be >= 0"),
        ({"seed": "9" * 5000}, f"seed must be <= {2**63 - 1}"),  # past Python's 4,300-digit int conversion limit
        ({"seed": "-" + "9" * 5000}, "seed must be >= 0"),
        ({"seed": "1", "n": "1" + "0" * 5000}, "n must be <= 64"),
    ],
    ids=["negative", "5000-digits", "negative-5000-digits", "n-5000-digits"],
)
@pytest.mark.parametrize("path", ["/sample/grid", "/interpolate/strip"])
def test_query_integers_of_any_length_get_a_4xx_naming_the_rule(service_url, path, query, rule):
    if path.startswith("/interpolate"):
        query = {("seed_a" if k == "seed" else "steps" if k == "n" else k): v for k, v in query.items()} | {"seed_b": "2"}
        rule = rule.replace("seed ", "seed_a ").replace("n must be <= 64", "steps must be <= 64")
    r = httpx.get(f"{service_url}{path}", params=query, timeout=TIMEOUT)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == rule


@pytest.mark.parametrize("path", ["/sample/grid?seed=3&n=4", "/interpolate?seed_a=1&seed_b=2&steps=3", "/info", "/ui/"])
def test_head_works_where_get_does(service_url, path):
    got = httpx.get(f"{service_url}{path}", timeout=TIMEOUT)
    head = httpx.head(f"{service_url}{path}", timeout=TIMEOUT)
    assert got.status_code == head.status_code == 200, head.text
    assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]


def test_metrics_name_the_model_and_execution_provider(service_url):
    info = httpx.get(f"{service_url}/info", timeout=TIMEOUT).json()
    metrics = httpx.get(f"{service_url}/metrics", timeout=TIMEOUT).text
    (line,) = [m for m in metrics.splitlines() if m.startswith("dcgan_generator_info{")]
    name, version = info["model"].split(":")
    assert f'model="{name}"' in line and f'version="{version}"' in line and f'provider="{info["provider"]}"' in line, line
    assert f'model_file="{info["model_file"]}"' in line and line.endswith(" 1.0"), line


def test_health_endpoints(service_url):
    assert httpx.get(f"{service_url}/livez", timeout=TIMEOUT).status_code == 200
    assert httpx.get(f"{service_url}/readyz", timeout=TIMEOUT).status_code == 200


def test_metrics_have_the_batch_size_histogram_and_count_requests_by_route(service_url):
    post(service_url, "/sample", {"seed": 1})
    metrics = httpx.get(f"{service_url}/metrics", timeout=TIMEOUT).text
    assert re.search(r'^dcgan_generator_batch_images_bucket\{.*le="1.0".*\} [1-9]', metrics, re.M)
    assert re.search(r'^dcgan_requests_total\{model="dcgan-generator",route="/sample",status="200"\} [1-9]', metrics, re.M)
    assert re.search(r'^dcgan_request_duration_seconds_count\{model="dcgan-generator",route="/sample"\} [1-9]', metrics, re.M)


def test_every_generation_route_is_labelled_by_its_path_in_the_in_progress_gauge(service_url):
    """The autoscaler (deploy/k8s) sums dcgan_requests_in_progress over pods: each route that runs the model is there."""
    from service.routes import ROUTES
    from service.v2 import INFER_LABEL

    query = {"/interpolate": "seed_a=1&seed_b=2&steps=2", "/interpolate/apng": "seed_a=1&seed_b=2&steps=2"}
    query["/interpolate/strip"] = query["/interpolate"]
    for route in ROUTES:
        r = httpx.get(f"{service_url}{route}?{query.get(route, 'seed=1&n=1')}", timeout=TIMEOUT)
        assert r.status_code == 200, (route, r.text)
    infer = {"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1], "data": [1]}]}
    assert post(service_url, "/v2/models/dcgan/infer", infer).status_code == 200
    metrics = httpx.get(f"{service_url}/metrics", timeout=TIMEOUT).text
    labelled = set(re.findall(r'^dcgan_requests_in_progress\{route="([^"]+)"\}', metrics, re.M))
    assert labelled == {*ROUTES, INFER_LABEL}, labelled


def test_metrics_stay_bounded_whatever_paths_clients_request(service_url):
    """Every path that is no route counts under route="other": thousands of random paths add no series."""
    import secrets

    def scrape() -> str:
        return httpx.get(f"{service_url}/metrics", timeout=TIMEOUT).text

    with httpx.Client(timeout=TIMEOUT) as client:
        client.get(f"{service_url}/warm-up-{secrets.token_hex(8)}")
        client.post(f"{service_url}/sample/{secrets.token_hex(8)}", json={"seed": 1})
        before = scrape()
        for _ in range(1500):
            client.get(f"{service_url}/{secrets.token_hex(12)}")
            client.post(f"{service_url}/sample/{secrets.token_hex(12)}", json={"seed": 1})
        after = scrape()
    series = lambda text: {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}
    grown = series(after) - series(before)
    assert not grown, sorted(grown)[:10]
    assert len(after) < len(before) + 200, (len(before), len(after))  # only the counts' digits changed
    assert re.search(r'^dcgan_requests_total\{model="",route="other",status="404"\} (\S+)', after, re.M)


def test_info_reports_manifest_provider_and_batching(service_url, manifest):
    model = post(service_url, "/sample", {"seed": 1}).json()["model"]
    info = httpx.get(f"{service_url}/info", timeout=TIMEOUT).json()
    assert info["manifest"] == manifest
    assert info["model"] == model
    assert info["provider"] in ort.get_available_providers()
    assert info["model_file"] in manifest["files"]
    assert info["generator"] == "inprocess" and info["batching"] == {"max_batch_size": 128}
    assert info["limits"]["max_n"] == 64
    merging = info["merging"]
    assert merging["generator_calls_in_flight"] == 1 and 0 < merging["generator_calls"] <= merging["requests"]
    assert info["latents"] == manifest["model"]["latents"]
    golden = info["golden"]  # the export's golden images, regenerated by this server before it became ready
    assert golden["checked"] and golden["ok"] and golden["max_level_diff"] <= golden["tolerance_levels"] == 1, golden
    assert (golden["cases"], golden["images"], golden["provider"]) == (4, 42, info["provider"])


def _batches(url: str) -> float:
    """ONNX Runtime calls so far: observations of the service's batch size histogram."""
    metrics = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    return sum(float(v) for v in re.findall(r"^dcgan_generator_batch_images_count(?:\{[^}]*\})? (\S+)", metrics, re.M))


def test_concurrent_requests_each_get_their_own_images(service_url, reference):
    """32 clients at once: batches mix requests, and each response is still its own seed's images (within 1 level)."""
    requests = [(1000 + i, 1 + i % 4) for i in range(32)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.post(f"{service_url}/sample/raw", json={"seed": s, "n": n}) for s, n in requests))

    batches_before = _batches(service_url)
    responses = asyncio.run(burst())
    batches_after = _batches(service_url)
    for (seed, n), r in zip(requests, responses):
        assert r.status_code == 200, r.text
        assert r.headers["x-seed"] == str(seed)
        images = np.frombuffer(r.content, np.uint8).reshape(tuple(int(d) for d in r.headers["x-shape"].split(",")))
        assert max_level_diff(images, reference(seed, n)) <= 1
    # The burst really was batched: fewer ONNX Runtime calls than requests (merged at the entry, the generator or both).
    assert 0 < batches_after - batches_before < len(requests)


def test_batching_off_serves_each_request_in_its_own_call(start_service, reference):
    """DCGAN_MAX_BATCH=1: no merging, so a burst makes one ONNX Runtime call per request."""

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT, limits=httpx.Limits(max_connections=16)) as client:
            return await asyncio.gather(*(client.post(f"{url}/sample/raw", json={"seed": 2000 + i, "n": 2}) for i in range(16)))

    with start_service({"DCGAN_MAX_BATCH": "1"}) as server:
        assert httpx.get(f"{server.url}/info", timeout=TIMEOUT).json()["batching"]["max_batch_size"] == 1
        responses = asyncio.run(burst(server.url))
        info = httpx.get(f"{server.url}/info", timeout=TIMEOUT).json()
        batches = _batches(server.url)
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        images = np.frombuffer(r.content, np.uint8).reshape(tuple(int(d) for d in r.headers["x-shape"].split(",")))
        assert max_level_diff(images, reference(2000 + i, 2)) <= 1
    assert info["merging"]["generator_calls"] == info["merging"]["requests"] == batches == 16


def test_a_generator_service_serves_the_same_bytes(start_service, service_url):
    """DCGAN_GENERATOR=service: the model in a BentoML service of its own, batched by BentoML across entry workers.
    Same API, same bytes as in process; BentoML's adaptive batching histogram and the batch histogram both count."""
    asked = [("/sample", {"seed": 5, "n": 3}), ("/sample/raw", {"seed": 2**63 - 1, "n": 2}), ("/sample/grid", {"seed": 0, "n": 4})]
    with start_service({"DCGAN_GENERATOR": "service"}) as server:
        info = httpx.get(f"{server.url}/info", timeout=TIMEOUT).json()
        answers = [post(server.url, path, body) for path, body in asked]
        metrics = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
        workers = {" ".join(p.cmdline()) for p in psutil.Process(server.process.pid).children(recursive=True)}
    assert info["generator"] == "service" and info["merging"]["generator_calls_in_flight"] == 2
    assert info["batching"] == {"max_batch_size": 128, "max_latency_ms": 5000, "max_batch_wait_ms": 0}
    assert any("--service-name generator" in w for w in workers), workers
    for (path, body), answer in zip(asked, answers, strict=True):
        assert answer.status_code == 200, answer.text
        in_process = post(service_url, path, body)  # its model tag differs (a store of its own), its images do not
        same = answer.json()["images"] == in_process.json()["images"] if path == "/sample" else answer.content == in_process.content
        assert same, path
    assert re.search(r'^bentoml_service_adaptive_batch_size_bucket\{.*method_name="generate".*\} [1-9]', metrics, re.M)
    assert re.search(r"^dcgan_generator_batch_images_count(?:\{[^}]*\})? [1-9]", metrics, re.M)


def test_seeds_give_the_same_bytes_alone_under_load_and_as_a_prefix(service_url):
    """loadtest.determinism against the served model: each case alone, then inside batches shared with other clients'
    seeds (the ONNX Runtime calls meanwhile held several images), and as the prefix of a larger n: identical bytes."""
    from loadtest.determinism import check

    report = asyncio.run(check(service_url, clients=8, rounds=2))
    assert report["images_per_onnx_call_under_load"] > 2, report
    assert report["all_identical"] and report["max_level_diff"] == 0, report["rows"]


def test_two_entry_workers_divide_the_cores_and_serve_the_same_bytes(start_service, service_url):
    """DCGAN_WORKERS=2: BentoML starts two entry workers, each with its own model and half of ONNX Runtime's threads;
    whichever answers, the bytes are the same, and /metrics sums both."""
    from service.settings import available_cores

    with start_service({"DCGAN_WORKERS": "2"}) as server:
        workers = [
            p for p in psutil.Process(server.process.pid).children(recursive=True) if "--service-name dcgan" in " ".join(p.cmdline())
        ]
        infos = [httpx.get(f"{server.url}/info", timeout=TIMEOUT).json() for _ in range(6)]
        answers = [post(server.url, "/sample/raw", {"seed": 11, "n": 3}) for _ in range(6)]
        served = metric(server.url, "dcgan_requests_total", route="/sample/raw", status="200")
    assert len(workers) == 2, [p.cmdline() for p in workers]
    assert {info["settings"]["DCGAN_WORKERS"] for info in infos} == {2}
    assert {info["ort_threads"] for info in infos} == {max(1, available_cores() // 2)}
    expected = post(service_url, "/sample/raw", {"seed": 11, "n": 3}).content
    assert all(a.status_code == 200 and a.content == expected for a in answers)
    assert served == 6  # counted once each, over both workers
