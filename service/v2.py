"""The Open Inference Protocol (KServe v2, as Triton speaks it) beside the service's own API, over the same batching.

    GET  /v2                                    server metadata
    GET  /v2/health/live, /v2/health/ready      server probes
    GET  /v2/models/{name}[/versions/{v}]       model metadata: inputs seed, n (INT64 [1, 1]) or z (FP32 [B, nz]);
                                                output images; .../ready: the model's probe
    POST /v2/models/{name}[/versions/{v}]/infer seed (+ n, default 1) or raw latents z -> images UINT8 [B, H, W, C]
    POST /v2/repository/index                   the loaded models: name, version, state READY
    POST /v2/repository/models/{name}/load      model control: swap {name} to its newest stored version, or to
                                                {"parameters": {"version": v}}; only with the API key

A model is a name of DCGAN_MODELS; "dcgan" names the default model too. A version other than the one loaded is 404.

Inputs and outputs may travel as JSON or with the binary tensor data extension (the JSON header's length in
`Inference-Header-Content-Length`, the tensors' bytes after it), as the official clients (tritonclient[http])
send and ask by default. A seed's images are the bytes /sample/raw gives for it: same latents, same batching.
"""

from __future__ import annotations

import json
import re

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.settings import MAX_SEED

INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
INFER_LABEL = "/v2/models/{model}/infer"  # the metrics' route label of every infer path
MAX_INFER_BODY = 1 << 20  # the largest valid body: z for MAX_N images, as JSON text
HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"INT64": np.int64, "INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32}


class BadInfer(Exception):
    """A request the protocol cannot serve: 400 with its reason."""


def _tensor(spec: dict, blob: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor from its JSON spec: its "data", or its bytes in the binary part at `offset`."""
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if datatype not in DTYPES or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadInfer(f"input {name!r}: datatype must be one of {', '.join(DTYPES)} and shape a list of sizes")
    dtype, count = np.dtype(DTYPES[datatype]), int(np.prod(shape))
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize or offset + size > len(blob):
            raise BadInfer(f"input {name!r}: binary_data_size {size} does not fit shape {shape} of {datatype} or the body")
        return np.frombuffer(blob[offset : offset + size], dtype=dtype).reshape(shape), offset + size
    try:
        values = np.asarray(spec["data"], dtype=dtype).reshape(shape)
    except (KeyError, ValueError, TypeError, OverflowError):
        raise BadInfer(f'input {name!r}: "data" must hold {count} {datatype} values for shape {shape}') from None
    return values, offset


def parse_infer(body: bytes, header_length: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """(the request's JSON, its inputs by name) from a JSON body or a JSON header plus binary tensors."""
    try:
        split = int(header_length) if header_length is not None else len(body)
        if not 0 < split <= len(body):
            raise ValueError
        request = json.loads(body[:split])
        specs = request["inputs"]
        if not isinstance(request, dict) or not isinstance(specs, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BadInfer('the body must be an inference request: {"inputs": [{"name", "datatype", "shape", "data"}, ...]}') from None
    blob, offset, inputs = memoryview(body)[split:], 0, {}
    for spec in specs:
        if not isinstance(spec, dict):
            raise BadInfer("each input must be an object with name, datatype, shape and data")
        inputs[spec.get("name")], offset = _tensor(spec, blob, offset)
    return request, inputs


def latents_from(inputs: dict[str, np.ndarray], nz: int, max_n: int) -> tuple[int, int] | np.ndarray:
    """(seed, n) for inputs seed [+ n], or the (B, nz) float32 latents of input z."""
    unknown = set(inputs) - {"seed", "n", "z"}
    if unknown or ("z" in inputs) == ("seed" in inputs) or ("n" in inputs and "z" in inputs):
        raise BadInfer('give input "seed" (INT64 [1, 1], with "n" optional) or input "z" (FP32 [batch, nz]), nothing else')
    if "z" in inputs:
        z = inputs["z"]
        if z.dtype != np.float32 or z.ndim != 2 or z.shape[1] != nz or not 1 <= z.shape[0] <= max_n or not np.isfinite(z).all():
            raise BadInfer(f"input z must be finite FP32 of shape [batch, {nz}], batch 1..{max_n}; got {z.dtype} {list(z.shape)}")
        return np.ascontiguousarray(z)
    seed, n = inputs["seed"], inputs.get("n", np.ones(1, np.int64))
    if seed.size != 1 or n.size != 1 or seed.dtype.kind not in "iu" or n.dtype.kind not in "iu":
        raise BadInfer("inputs seed and n must be one integer each")
    seed, n = int(seed.ravel()[0]), int(n.ravel()[0])
    if not 0 <= seed <= MAX_SEED or not 1 <= n <= max_n:
        raise BadInfer(f"seed must be in [0, 2**63-1] and n in [1, {max_n}]; got {seed}, {n}")
    return seed, n


def wants_binary(request: dict) -> bool:
    params = request.get("parameters") or {}
    outputs = request.get("outputs") or []
    return bool(params.get("binary_data_output")) or any(
        (o.get("parameters") or {}).get("binary_data") for o in outputs if isinstance(o, dict)
    )


def infer_target(path: str) -> str | None:
    """The model a v2 infer path names ("name" or "name:version"), or None when `path` is not an infer path."""
    match = INFER.fullmatch(path)
    if match is None:
        return None
    name, version = match.groups()
    return f"{name}:{version}" if version else name


def infer_response(request: dict, name: str, version: str, images: np.ndarray) -> tuple[str, dict[str, str], bytes]:
    """images (B, H, W, C) uint8 as the output tensor "images", in JSON or as binary data after a JSON header:
    (media type, headers, body)."""
    output = {"name": "images", "datatype": "UINT8", "shape": list(images.shape)}
    head = {"model_name": name, "model_version": version, "outputs": [output]}
    if "id" in request:
        head["id"] = request["id"]
    if not wants_binary(request):
        output["data"] = images.ravel().tolist()
        return "application/json", {}, json.dumps(head, separators=(",", ":")).encode()
    output["parameters"] = {"binary_data_size": images.nbytes}
    header = json.dumps(head).encode()
    return "application/octet-stream", {HEADER_LENGTH: str(len(header))}, header + images.tobytes()


def model_metadata(name: str, described: dict) -> dict:
    m = described["manifest"]["model"]
    return {
        "name": name,
        "versions": [described["version"]],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "seed", "datatype": "INT64", "shape": [1, 1]},
            {"name": "n", "datatype": "INT64", "shape": [1, 1]},
            {"name": "z", "datatype": "FP32", "shape": [-1, m["nz"]]},
        ],
        "outputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, m["image_size"], m["image_size"], m["channels"]]}],
    }


def routes(api) -> list[Route]:
    """The protocol's other routes, served by `api` (service/api.py's Api: its models, probes and API key)."""

    async def version_of(request: Request):
        name, version = request.path_params["name"], request.path_params.get("version")
        return await api.models.find(f"{name}:{version}" if version else name)

    def probe(check: str):
        async def endpoint(request: Request) -> Response:
            ok = await getattr(api, check)()
            if ok and "name" in request.path_params:
                await version_of(request)  # 404 for a model not loaded
            return Response(status_code=200 if ok else 503)

        return endpoint

    async def metadata(request: Request) -> Response:
        api.authorise(dict(request.headers.raw))
        version = await version_of(request)
        return JSONResponse(model_metadata(request.path_params["name"], version.described))

    async def server(request: Request) -> Response:
        return JSONResponse({"name": "dcgan-serving", "version": "2", "extensions": ["binary_tensor_data", "model_repository"]})

    async def index(request: Request) -> Response:
        api.authorise(dict(request.headers.raw))
        await api.models.ready()
        loaded = [{"name": v.name, "version": v.tag.partition(":")[2], "state": "READY"} for v in api.models.current.values()]
        return JSONResponse(loaded)

    async def load(request: Request) -> Response:
        return JSONResponse(await api.load_model(request.path_params["name"], await request.body(), dict(request.headers.raw)))

    return [
        Route("/v2", server, methods=["GET"]),
        Route("/v2/health/live", probe("alive"), methods=["GET"]),
        Route("/v2/health/ready", probe("ready"), methods=["GET"]),
        Route("/v2/models/{name}/ready", probe("ready"), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", probe("ready"), methods=["GET"]),
        Route("/v2/models/{name}", metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", metadata, methods=["GET"]),
        Route("/v2/repository/index", index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", load, methods=["POST"]),
    ]
