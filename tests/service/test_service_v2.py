"""The Open Inference Protocol (KServe v2) beside the service's own API (service/v2.py), with the official client."""

from __future__ import annotations

import gzip
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from contract.latents import latents_for_seed

TIMEOUT = 30
SEED = {"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [1]}]}


def seed_inputs(seed: int, n: int) -> list[triton.InferInput]:
    inputs = [triton.InferInput("seed", [1, 1], "INT64"), triton.InferInput("n", [1, 1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([[seed]], np.int64))  # binary tensor data, the client's default
    inputs[1].set_data_from_numpy(np.array([[n]], np.int64))
    return inputs


@pytest.fixture(scope="module")
def client(service_url):
    return triton.InferenceServerClient(service_url.removeprefix("http://"))


def raw(url: str, seed: int, n: int) -> bytes:
    return httpx.post(f"{url}/sample/raw", json={"seed": seed, "n": n}, timeout=TIMEOUT).content


def test_health_and_metadata(client, service_url):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("dcgan")
    meta = client.get_model_metadata("dcgan")
    info = httpx.get(f"{service_url}/info", timeout=TIMEOUT).json()
    m = info["manifest"]["model"]
    assert meta["versions"] == [info["model"].split(":")[1]]
    assert {i["name"]: i["shape"] for i in meta["inputs"]} == {"seed": [1, 1], "n": [1, 1], "z": [-1, m["nz"]]}
    assert meta["outputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, m["image_size"], m["image_size"], m["channels"]]}]
    assert httpx.get(f"{service_url}/v2/models/other", timeout=TIMEOUT).status_code == 404
    assert httpx.get(f"{service_url}/v2", timeout=TIMEOUT).json()["extensions"] == ["binary_tensor_data", "model_repository"]


def test_seed_gives_the_bytes_of_sample_raw_binary_or_json(client, service_url):
    binary = client.infer("dcgan", seed_inputs(42, 3)).as_numpy("images")  # binary in, binary out
    assert binary.dtype == np.uint8 and binary.shape[0] == 3 and binary.tobytes() == raw(service_url, 42, 3)
    as_json = client.infer("dcgan", seed_inputs(42, 3), outputs=[triton.InferRequestedOutput("images", binary_data=False)])
    assert np.array_equal(as_json.as_numpy("images"), binary)
    body = {"id": "r-1", "inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [42]}]}  # n defaults to 1
    r = httpx.post(f"{service_url}/v2/models/dcgan/infer", json=body, timeout=TIMEOUT)
    out = r.json()
    assert r.status_code == 200 and out["id"] == "r-1" and out["model_name"] == "dcgan"
    assert bytes(out["outputs"][0]["data"]) == raw(service_url, 42, 1)


def test_raw_latents_go_through_the_same_model(client, service_url):
    nz = httpx.get(f"{service_url}/info", timeout=TIMEOUT).json()["manifest"]["model"]["nz"]
    z = triton.InferInput("z", [4, nz], "FP32")
    z.set_data_from_numpy(latents_for_seed(7, 4, nz))
    assert client.infer("dcgan", [z]).as_numpy("images").tobytes() == raw(service_url, 7, 4)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {
                "inputs": [
                    {"name": "seed", "shape": [1], "datatype": "INT64", "data": [1]},
                    {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0, 0]},
                ]
            },
            "nothing else",
        ),
        ({"inputs": [{"name": "z", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}]}, "shape [batch,"),
        ({"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [-5]}]}, "seed must be in"),
        (
            {
                "inputs": [
                    {"name": "seed", "shape": [1], "datatype": "INT64", "data": [1]},
                    {"name": "n", "shape": [1], "datatype": "INT64", "data": [0]},
                ]
            },
            "n in [1,",
        ),
        ({"inputs": [{"name": "seed", "shape": [2], "datatype": "INT64", "data": [1]}]}, "must hold 2 INT64 integers"),
        ({"inputs": [{"name": "seed", "shape": [1], "datatype": "BF16", "data": [1]}]}, "datatype must be one of"),
        ({"inputs": "seed"}, "must be an inference request"),
        # Each field of the wrong JSON type: a 400 naming it, never a 500
        ({**SEED, "parameters": "x"}, '"parameters" must be an object'),
        ({**SEED, "outputs": 5}, '"outputs" must be a list'),
        ({**SEED, "outputs": [{"name": "images", "parameters": [1]}]}, '"parameters" must be an object'),
        ({**SEED, "outputs": [{"name": "nope"}]}, 'naming the one output, {"name": "images"}'),
        ({"inputs": [{**SEED["inputs"][0], "parameters": "x"}]}, '"parameters" must be an object'),
        ({"inputs": [{**SEED["inputs"][0], "name": ["seed"]}]}, '"name" (a string)'),
        ({"inputs": [{**SEED["inputs"][0], "datatype": {"INT64": 1}}]}, "datatype must be one of"),
        ({"inputs": [{**SEED["inputs"][0], "shape": [True]}]}, "shape a list of sizes"),
        # Values as the datatype says, as /sample wants them: 1.5, true and "1" are not integers
        ({"inputs": [{**SEED["inputs"][0], "data": [1.5]}]}, "1.5 is not one"),
        ({"inputs": [{**SEED["inputs"][0], "data": [True]}]}, "true is not one"),
        ({"inputs": [{**SEED["inputs"][0], "data": ["1"]}]}, '"1" is not one'),
        ({"inputs": [{**SEED["inputs"][0], "data": [2**63]}]}, "INT64 integers in [-9223372036854775808, 9223372036854775807]"),
        ({"inputs": [{**SEED["inputs"][0], "data": 1}]}, '"data" must hold 1 INT64 integers'),
        ({"inputs": [SEED["inputs"][0], {"name": "n", "shape": [1], "datatype": "INT64", "data": [2.9]}]}, "2.9 is not one"),
        ({"inputs": [SEED["inputs"][0], SEED["inputs"][0]]}, "input 'seed' is given twice"),
        ({"inputs": [{"name": "seed", "shape": [10**12, 10**12], "datatype": "INT64", "data": [1]}]}, f"holds {10**24} values"),
        ({"inputs": [{"name": "z", "shape": [1, 100], "datatype": "FP32", "data": [1e30] * 100}]}, "finite values in [-1000, 1000]"),
        ({"inputs": [{"name": "z", "shape": [1, 100], "datatype": "FP32", "data": [10**400] * 100}]}, "within FP32's range"),
    ],
)
def test_bad_requests_get_400_naming_the_problem(service_url, body, fragment):
    r = httpx.post(f"{service_url}/v2/models/dcgan/infer", json=body, timeout=TIMEOUT)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text
    assert "x-request-id" in r.headers


def test_malformed_bodies_and_binary_sizes(service_url):
    url = f"{service_url}/v2/models/dcgan/infer"
    assert httpx.post(url, content=b"{not json", timeout=TIMEOUT).status_code == 400
    header = json.dumps({"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}}]}).encode()
    ok = httpx.post(
        url, content=header + np.int64(5).tobytes(), headers={"Inference-Header-Content-Length": str(len(header))}, timeout=TIMEOUT
    )
    assert ok.status_code == 200 and bytes(ok.json()["outputs"][0]["data"]) == raw(service_url, 5, 1)
    short = httpx.post(url, content=header + b"\0" * 4, headers={"Inference-Header-Content-Length": str(len(header))}, timeout=TIMEOUT)
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
    nan = {"inputs": [{"name": "z", "shape": [1, 100], "datatype": "FP32", "data": [float("nan")] * 100}]}
    assert httpx.post(url, content=json.dumps(nan), timeout=TIMEOUT).status_code == 400
    assert httpx.post(url, content=b"x" * (2 << 20), timeout=TIMEOUT).status_code == 413
    assert httpx.get(url, timeout=TIMEOUT).status_code == 405
    trailing = httpx.post(
        url, content=header + np.int64(5).tobytes() + b"\0", headers={"Inference-Header-Content-Length": str(len(header))}, timeout=TIMEOUT
    )
    assert trailing.status_code == 400 and "1 bytes after the inputs" in trailing.json()["error"]
    deep = httpx.post(url, content=b"[" * 100_000, timeout=TIMEOUT)
    assert deep.status_code == 400 and "inference request" in deep.json()["error"]
    wrong_size = {"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8.0}}]}
    header = json.dumps(wrong_size).encode()
    length = {"Inference-Header-Content-Length": str(len(header))}
    r = httpx.post(url, content=header + np.int64(5).tobytes(), headers=length, timeout=TIMEOUT)
    assert r.status_code == 400 and "binary_data_size 8.0" in r.json()["error"]


def test_compressed_requests_as_tritonclient_sends_them(client, service_url):
    for algorithm in ("gzip", "deflate"):
        result = client.infer("dcgan", seed_inputs(11, 2), request_compression_algorithm=algorithm)
        assert result.as_numpy("images").tobytes() == raw(service_url, 11, 2)
    url = f"{service_url}/v2/models/dcgan/infer"
    r = httpx.post(url, content=b"not gzip", headers={"Content-Encoding": "gzip"}, timeout=TIMEOUT)
    assert r.status_code == 400 and "not valid gzip" in r.json()["error"]
    junk = gzip.compress(json.dumps(SEED).encode()) + b"junk"
    r = httpx.post(url, content=junk, headers={"Content-Encoding": "gzip"}, timeout=TIMEOUT)
    assert r.status_code == 400 and "goes on after its end" in r.json()["error"]
    r = httpx.post(url, content=b"{}", headers={"Content-Encoding": "br"}, timeout=TIMEOUT)
    assert r.status_code == 415 and "Content-Encoding 'br'" in r.json()["error"]
    bomb = gzip.compress(b" " * (2 << 20))  # 2 MiB of spaces in 2 KiB
    r = httpx.post(url, content=bomb, headers={"Content-Encoding": "gzip"}, timeout=TIMEOUT)
    assert r.status_code == 413 and "uncompressed" in r.json()["error"]
