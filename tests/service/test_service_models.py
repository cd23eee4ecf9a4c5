"""Several models in one server (DCGAN_MODELS): addressing, isolation, the v2 routes, version swaps, limits.

The models are real artifacts from the real exporter (tests/helpers.py's tiny_artifact, two seeds: other weights, so
other images), registered in each server's own model store; every server is a real `bentoml serve`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from helpers import metric, register, serve

from common.paths import REPO_ROOT
from contract.artifact import MANIFEST, file_sha256

TIMEOUT = 60
KEY = {"Authorization": "Bearer admin-key"}
KEY_HEADER = "Authorization: Bearer admin-key"
BODY_TIMEOUT_S = 2


def raw(url: str, seed: int, model: str | None = None, headers: dict | None = None) -> httpx.Response:
    params = {"seed": seed, **({"model": model} if model else {})}
    r = httpx.get(f"{url}/sample/raw", params=params, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r


def tags(url: str, headers: dict | None = None) -> list[str]:
    return [m["tag"] for m in httpx.get(f"{url}/info", headers=headers, timeout=TIMEOUT).json()["models"]]


# ---- two models in one server ----


def test_each_model_answers_its_requests_with_its_own_images(two_models):
    url = two_models.url
    default, other = tags(url)
    assert default.startswith("dcgan-generator:") and other.startswith("dcgan-other:")
    plain, named, pinned, b = raw(url, 5), raw(url, 5, "dcgan-generator"), raw(url, 5, default), raw(url, 5, "dcgan-other")
    assert plain.headers["x-model"] == named.headers["x-model"] == pinned.headers["x-model"] == default
    assert b.headers["x-model"] == other
    assert plain.content == named.content == pinned.content != b.content
    # ETags are per model version: the same seed on another model is another ETag, however the model is named.
    assert plain.headers["etag"] == named.headers["etag"] == pinned.headers["etag"] != b.headers["etag"]
    body = httpx.post(f"{url}/sample", json={"seed": 5, "n": 2, "model": "dcgan-other"}, timeout=TIMEOUT).json()
    assert body["model"] == other and len(body["images"]) == 2
    walk = httpx.get(f"{url}/interpolate", params={"seed_a": 1, "seed_b": 2, "steps": 3, "model": "dcgan-other"}, timeout=TIMEOUT)
    assert walk.status_code == 200 and walk.headers["x-model"] == other


@pytest.mark.parametrize(
    ("model", "status", "fragment"),
    [
        ("nope", 404, "is not loaded; this server serves dcgan-generator:"),
        ("dcgan-other:nosuchversion", 404, "dcgan-other:"),
        ("Not A Name", 422, "model"),
    ],
)
def test_an_unknown_model_gets_404_naming_the_loaded_ones(two_models, model, status, fragment):
    for r in (
        httpx.post(f"{two_models.url}/sample", json={"seed": 1, "model": model}, timeout=TIMEOUT),
        httpx.get(f"{two_models.url}/sample/grid", params={"seed": 1, "model": model}, timeout=TIMEOUT),
    ):
        assert r.status_code == status and fragment in r.json()["error"], r.text
    if status == 404:
        assert "dcgan-other:" in r.json()["error"]


def test_the_query_names_the_model_of_a_post_too(two_models):
    url = two_models.url
    default, other = tags(url)

    def post(query: str, body: dict) -> httpx.Response:
        return httpx.post(f"{url}/sample/raw{query}", json={"seed": 3, **body}, timeout=TIMEOUT)

    assert post("?model=dcgan-other", {}).headers["x-model"] == other
    assert post("?model=dcgan-other", {"model": "dcgan-other"}).headers["x-model"] == other
    for query, body, fragment in [
        ("?model=dcgan-other", {"model": "dcgan-generator"}, "in the body and 'dcgan-other' in the query"),
        ("?model=dcgan-other&model=dcgan-generator", {}, "model is given more than once"),
        ("?seed=4", {}, "seed is not read from the query of a POST"),
        ("?model=Not%20A%20Name", {}, "model"),
    ]:
        r = post(query, body)
        assert r.status_code == 422 and fragment in r.json()["error"], (query, r.text)
    r = httpx.get(f"{url}/sample/raw", params=[("seed", 1), ("seed", 2)], timeout=TIMEOUT)
    assert r.status_code == 422 and "seed is given more than once" in r.json()["error"], r.text


def test_the_alias_and_latest_take_versions_like_names_do(two_models):
    url = two_models.url
    default, other = tags(url)
    version = default.split(":")[1]
    expected = raw(url, 5).content
    for asked in (f"dcgan:{version}", "dcgan:latest", "dcgan-generator:latest"):
        r = raw(url, 5, asked)
        assert r.headers["x-model"] == default and r.content == expected, asked
    assert raw(url, 5, "dcgan-other:latest").headers["x-model"] == other
    assert httpx.get(f"{url}/v2/models/dcgan/versions/{version}", timeout=TIMEOUT).json()["versions"] == [version]
    assert httpx.get(f"{url}/v2/models/dcgan/versions/{version}/ready", timeout=TIMEOUT).status_code == 200
    r = httpx.get(f"{url}/v2/repository/index", timeout=TIMEOUT)  # a POST route: a JSON 405 naming the method
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "use POST" in r.json()["error"], r.text


def test_info_lists_the_loaded_models_default_first(two_models):
    info = httpx.get(f"{two_models.url}/info", timeout=TIMEOUT).json()
    models = info["models"]
    assert [m["name"] for m in models] == ["dcgan-generator", "dcgan-other"]
    assert info["model"] == models[0]["tag"] and info["settings"]["DCGAN_MODELS"] == "dcgan-generator,dcgan-other"
    for m in models:
        assert m["onnx_bytes"] > 0 and m["golden_ok"] and m["provider"] == "CPUExecutionProvider"
        assert m["tag"] == f"{m['name']}:{m['version']}"


def test_the_v2_routes_serve_both_models_to_tritonclient(two_models):
    url = two_models.url
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    default, other = tags(url)
    index = client.get_model_repository_index()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("dcgan-generator", default.split(":")[1], "READY"),
        ("dcgan-other", other.split(":")[1], "READY"),
    ]
    for tag in (default, other):
        name, version = tag.split(":")
        assert client.is_model_ready(name) and client.is_model_ready(name, version)
        assert client.get_model_metadata(name)["versions"] == [version]
        assert client.get_model_metadata(name, version)["name"] == name
        for asked in ("", version):
            inputs = [triton.InferInput("seed", [1, 1], "INT64")]
            inputs[0].set_data_from_numpy(np.array([[7]], np.int64))
            result = client.infer(name, inputs, model_version=asked)
            assert result.get_response()["model_version"] == version
            assert result.as_numpy("images").tobytes() == raw(url, 7, name).content
    assert not client.is_model_ready("dcgan-other", "nosuchversion")
    assert httpx.get(f"{url}/v2/models/nope", timeout=TIMEOUT).status_code == 404
    # "dcgan" (the v2 name of the one-model server) still names the default model.
    assert client.get_model_metadata("dcgan")["versions"] == [default.split(":")[1]]


def test_metrics_carry_the_model(two_models):
    url = two_models.url
    before = metric(url, "dcgan_requests_total", route="/sample/raw", model="dcgan-other", status="200")
    raw(url, 3, "dcgan-other")
    assert metric(url, "dcgan_requests_total", route="/sample/raw", model="dcgan-other", status="200") == before + 1
    assert metric(url, "dcgan_generator_batch_images_count", model="dcgan-other") > 0
    assert metric(url, "dcgan_generator_info", model="dcgan-other") == 1
    assert metric(url, "dcgan_model_onnx_bytes", model="dcgan-other") > 0


def test_model_control_is_off_without_an_api_key(two_models):
    r = httpx.post(f"{two_models.url}/v2/repository/models/dcgan-other/load", timeout=TIMEOUT)
    assert r.status_code == 403 and "DCGAN_API_KEY" in r.json()["error"]


def test_one_models_overload_does_not_delay_the_other(service_artifact, other_artifact, tmp_path):
    """dcgan-other flooded past its queue bound (503s) while the default model's requests are all answered."""
    env = {"DCGAN_MODELS": "dcgan-generator,dcgan-other", "DCGAN_MAX_QUEUED_IMAGES": "128"}
    with serve(tmp_path, service_artifact, env, {"dcgan-other": other_artifact}) as server:

        async def run() -> tuple[list[int], list[int]]:
            flooded, calm = [], []
            stop = time.monotonic() + 6
            async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=64)) as http:

                async def flood() -> None:
                    while time.monotonic() < stop:
                        r = await http.post("/sample/raw", json={"seed": 1, "n": 64, "model": "dcgan-other"})
                        flooded.append(r.status_code)

                async def one_by_one() -> None:
                    await asyncio.sleep(1)  # the flood's queue is full by then
                    while time.monotonic() < stop:
                        calm.append((await http.post("/sample/raw", json={"seed": 2})).status_code)

                await asyncio.gather(*(flood() for _ in range(24)), one_by_one())
            return flooded, calm

        flooded, calm = asyncio.run(run())
    assert 503 in flooded, sorted(set(flooded))  # dcgan-other was overloaded ...
    assert calm and set(calm) == {200}, calm  # ... and not one default-model request was refused for it


# ---- version swaps ----


def failing_version(artifact: Path, wrong_golden_from: Path, out: Path) -> Path:
    """A copy of `artifact` whose golden outputs are another model's: its hashes check, its golden check fails."""
    copy = shutil.copytree(artifact, out)
    shutil.copyfile(wrong_golden_from / "golden.npy", copy / "golden.npy")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"]["golden.npy"]["sha256"] = file_sha256(copy / "golden.npy")
    (copy / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return copy


def load(url: str, name: str, version: str | None = None, headers: dict | None = KEY) -> httpx.Response:
    body = {"parameters": {"version": version}} if version else None
    return httpx.post(f"{url}/v2/repository/models/{name}/load", json=body, headers=headers, timeout=TIMEOUT)


async def hammer(url: str, clients: int, seeds: int, until: asyncio.Event) -> list[tuple[int, int, str, bytes]]:
    """`clients` clients asking /sample/raw for seeds in turn until `until` is set: (client, seed, tag, bytes) each."""
    answers = []
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, headers=KEY) as http:

        async def client(i: int) -> None:
            k = i
            while not until.is_set():
                seed = k % seeds
                r = await http.get("/sample/raw", params={"seed": seed})
                assert r.status_code == 200, r.text  # 0 failed requests through the swaps
                answers.append((i, seed, r.headers["x-model"], r.content))
                k += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
    return answers


def test_a_swap_under_load_loses_nothing_and_mixes_nothing(service_artifact, other_artifact, tmp_path):
    env = {"DCGAN_API_KEY": "admin-key", "DCGAN_MAX_MODELS_MB": "1", "DCGAN_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}  # artifacts: 0.25 MiB
    with serve(tmp_path / "server", service_artifact, env) as server:
        url, home = server.url, tmp_path / "server" / "bentoml"
        (a,) = tags(url, KEY)
        reference = {a: {s: raw(url, s, a, KEY).content for s in range(8)}}
        b = register(home, other_artifact, "dcgan-generator")  # a new version in the store: nothing changes yet
        assert b != a and tags(url, KEY) == [a]
        swaps = []

        async def run() -> list:
            until = asyncio.Event()
            load_task = asyncio.create_task(hammer(url, 16, 8, until))
            for version in (b.split(":")[1], a.split(":")[1], None):  # to b, back to a, to the newest (b)
                await asyncio.sleep(1.5)
                swaps.append(await asyncio.to_thread(load, url, "dcgan-generator", version))
            await asyncio.sleep(1.5)
            until.set()
            return await load_task

        answers = asyncio.run(run())
        assert [(r.status_code, r.json()["previous"], r.json()["tag"]) for r in swaps] == [(200, a, b), (200, b, a), (200, a, b)]
        assert all(r.json()["workers"] == {"serving": 1, "of": 1} for r in swaps)
        reference[b] = {s: raw(url, s, b, KEY).content for s in range(8)}  # b serves now
        assert {tag for _, _, tag, _ in answers} == {a, b}
        mixed = [(i, seed, tag) for i, seed, tag, content in answers if content != reference[tag][seed]]
        assert not mixed, mixed[:5]  # every answer's images are its stated version's
        for i in range(16):  # each client saw the versions in the swaps' order: a, then b, then a, then b
            seen = [tag for client, _, tag, _ in answers if client == i]
            changes = [tag for k, tag in enumerate(seen) if k == 0 or tag != seen[k - 1]]
            assert changes == [a, b, a, b][: len(changes)] and len(changes) >= 3, changes
        log = server.log()
        assert f"model {a} released" in log and f"model {b} released" in log

        # A version that fails its golden check is refused with one line; the version serving keeps serving.
        c = register(home, failing_version(other_artifact, service_artifact, tmp_path / "bad"), "dcgan-generator")
        refused = load(url, "dcgan-generator", c.split(":")[1])
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error.startswith(f"model {c} refused, {b} keeps serving: ") and "golden" in error and "\n" not in error
        assert raw(url, 1, headers=KEY).headers["x-model"] == b
        assert metric(url, "dcgan_model_loads_total", model="dcgan-generator", outcome="refused") == 1  # the golden check
        assert metric(url, "dcgan_model_loads_total", model="dcgan-generator", outcome="loaded") == 3
        assert sum(f"model {c} refused" in line for line in server.log().splitlines()) == 1

        # A version past DCGAN_MAX_MODELS_MB is refused at load time (the committed default model takes 3.2 MiB).
        big = register(home, REPO_ROOT / "artifacts" / "default", "dcgan-generator")
        too_big = load(url, "dcgan-generator", big.split(":")[1])
        assert too_big.status_code == 409 and "more than DCGAN_MAX_MODELS_MB=1" in too_big.json()["error"], too_big.text
        assert raw(url, 1, headers=KEY).headers["x-model"] == b

        # Model control wants the key, and a name this server serves.
        assert load(url, "dcgan-generator", headers=None).status_code == 401
        assert load(url, "dcgan-generator", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert load(url, "dcgan-other").status_code == 404
        assert load(url, "dcgan-generator", "nosuchversion").status_code == 404
        for bad in ("../x", "a b", "x:y", "-x", "v" * 300):  # not a version at all: 400, never a 500
            r = load(url, "dcgan-generator", bad)
            assert r.status_code == 400 and "is not a model version" in r.json()["error"], r.text
        by_alias = load(url, "dcgan", a.split(":")[1]).json()  # the alias names the default model here too
        assert (by_alias["name"], by_alias["tag"]) == ("dcgan-generator", a), by_alias
        assert metric(url, "dcgan_generator_info", model="dcgan-generator", version=a.split(":")[1]) == 1
        assert metric(url, "dcgan_generator_info", model="dcgan-generator", version=b.split(":")[1]) == 0

        # Its body: read only with the key, bounded and within DCGAN_BODY_TIMEOUT_S, as a generation request's
        admin = f"{url}/v2/repository/models/dcgan-generator/load"
        assert httpx.post(admin, content=b"[" * 8192, timeout=TIMEOUT).status_code == 401
        assert httpx.post(admin, content=b"[" * 8192, headers=KEY, timeout=TIMEOUT).status_code == 413
        deep = httpx.post(admin, content=b"[" * 4000, headers=KEY, timeout=TIMEOUT)
        assert deep.status_code == 400 and "the body must be empty or" in deep.json()["error"], deep.text
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            started = time.monotonic()
            head = f"POST /v2/repository/models/dcgan-generator/load HTTP/1.1\r\nHost: x\r\n{KEY_HEADER}\r\nContent-Length: 100\r\n\r\n"
            sock.sendall(head.encode() + b'{"par')
            answer = sock.recv(4096).decode()
            assert answer.startswith("HTTP/1.1 408") and time.monotonic() - started < 2 * BODY_TIMEOUT_S, answer


def test_every_worker_follows_the_store_and_the_pins(service_artifact, other_artifact, tmp_path):
    """DCGAN_MODEL_POLL_S: a new version in the store reaches every worker; an admin load pins a version in all of them."""
    env = {"DCGAN_WORKERS": "2", "DCGAN_MODEL_POLL_S": "1", "DCGAN_API_KEY": "admin-key"}
    with serve(tmp_path / "server", service_artifact, env) as server:
        url = server.url
        (a,) = tags(url, KEY)
        b = register(tmp_path / "server" / "bentoml", other_artifact, "dcgan-generator")

        def served_by_all(tag: str) -> bool:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with httpx.Client(base_url=url, headers=KEY, timeout=TIMEOUT) as http:  # new connections: both workers
                    seen = {http.get("/sample/raw", params={"seed": 1}).headers["x-model"] for _ in range(16)}
                if seen == {tag}:
                    return True
                time.sleep(0.5)
            return False

        assert served_by_all(b)
        swapped = load(url, "dcgan", a.split(":")[1])  # by the alias: pinned under the model's own name
        assert swapped.status_code == 200 and swapped.json()["workers"] == {"serving": 2, "of": 2}, swapped.text
        for _ in range(8):  # answered once both workers serve it: no connection finds the old version any more
            with httpx.Client(base_url=url, headers=KEY, timeout=TIMEOUT) as http:
                assert http.get("/sample/raw", params={"seed": 1}).headers["x-model"] == a
        assert served_by_all(a)  # pinned: the poll does not take it back to the newest
        time.sleep(2.5)
        assert served_by_all(a)


# ---- limits ----


def test_limits_stop_start_up_with_one_line(serve_to_exit, other_artifact):
    code, output = serve_to_exit({"DCGAN_MODELS": "dcgan-generator,dcgan-other", "DCGAN_MAX_MODELS": "1"})
    lines = output.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "more than DCGAN_MAX_MODELS=1" in lines[0], output
    code, output = serve_to_exit({"DCGAN_MAX_MODELS_MB": "1"}, artifact_dir=REPO_ROOT / "artifacts" / "default")  # 3.2 MiB
    lines = output.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "more than DCGAN_MAX_MODELS_MB=1" in lines[0], output
