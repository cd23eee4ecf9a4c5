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
send and ask by default; a request body may be compressed (Content-Encoding gzip or deflate). Every field is checked
for its JSON type and every value for its datatype, so a malformed request is a 400 naming what is wrong. A seed's
images are the bytes /sample/raw gives for it: same latents, same batching.
"""

from __future__ import annotations

import json
import math
import re
import zlib

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.errors import PayloadTooLarge as TooLarge
from service.errors import UnsupportedMediaType as UnsupportedEncoding
from service.settings import MAX_SEED

INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
INFER_LABEL = "/v2/models/{model}/infer"  # the metrics' route label of every infer path
MAX_INFER_BODY = 1 << 20  # the largest valid body: z for MAX_N images, as JSON text
HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"INT64": np.int64, "INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32}
INT_RANGE = {"INT64": (-(2**63), 2**63 - 1), "INT32": (-(2**31), 2**31 - 1), "UINT64": (0, 2**64 - 1)}
FP32_MAX = float(np.finfo(np.float32).max)
MAX_VALUES = MAX_INFER_BODY  # more values than any valid request holds (each takes at least a byte)
MAX_ABS_Z = 1000.0  # latents are standard normal; far larger ones only overflow the network's activations
OUTPUT = "images"


class BadInfer(Exception):
    """A request the protocol cannot serve: 400 with its reason."""


def _parameters(owner: dict, what: str) -> dict:
    """The "parameters" object of a request, input or output ({} when absent)."""
    params = owner.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadInfer(f'{what}: "parameters" must be an object')
    return params


def _values(data: object, count: int, datatype: str, name: str, shape: list) -> list:
    """The JSON "data" of an input, flattened (the protocol allows nested rows): `count` numbers of `datatype`, each a
    JSON integer in the type's range for the integer types (not 1.5, true or "1"), a finite number within FP32's range
    for FP32."""
    flat, pending = [], [data]
    while pending:
        item = pending.pop()
        if isinstance(item, list) and len(flat) + len(pending) <= count:
            pending.extend(reversed(item))
        else:
            flat.append(item)
    low, high = INT_RANGE.get(datatype, (-FP32_MAX, FP32_MAX))
    rule = f"{datatype} integers in [{low}, {high}]" if datatype in INT_RANGE else "finite numbers within FP32's range"
    if not isinstance(data, list) or len(flat) != count:
        got = f"{len(flat)} values" if isinstance(data, list) else json.dumps(data)[:40]
        raise BadInfer(f'input {name!r}: "data" must hold {count} {rule} for shape {shape}, got {got}')
    for value in flat:
        ok = (type(value) is int or (datatype not in INT_RANGE and type(value) is float)) and low <= value <= high  # NaN fails
        if not ok:
            raise BadInfer(f'input {name!r}: "data" must hold {rule}; {json.dumps(value)[:40]} is not one')
    return flat


def _tensor(spec: dict, blob: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor from its JSON spec: its "data", or its bytes in the binary part at `offset`."""
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str):
        raise BadInfer('each input needs a "name" (a string)')
    dims_ok = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    if not isinstance(datatype, str) or datatype not in DTYPES or not dims_ok:
        raise BadInfer(f"input {name!r}: datatype must be one of {', '.join(DTYPES)} and shape a list of sizes")
    count = math.prod(shape)  # Python ints: no overflow, however large the sizes
    if count > MAX_VALUES:
        raise BadInfer(f"input {name!r}: shape {shape} holds {count} values; an input holds at most {MAX_VALUES}")
    dtype = np.dtype(DTYPES[datatype])
    size = _parameters(spec, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != count * dtype.itemsize or offset + size > len(blob):
            raise BadInfer(f"input {name!r}: binary_data_size {json.dumps(size)[:40]} does not fit shape {shape} of {datatype} or the body")
        return np.frombuffer(blob[offset : offset + size], dtype=dtype).reshape(shape), offset + size
    if "data" not in spec:
        raise BadInfer(f'input {name!r}: give its values in "data", or binary_data_size and the bytes after the JSON')
    return np.array(_values(spec["data"], count, datatype, name, shape), dtype=dtype).reshape(shape), offset


def decoded(body: bytes, encoding: str | None) -> bytes:
    """The body as sent before its Content-Encoding (gzip or deflate, as tritonclient compresses requests), at most
    MAX_INFER_BODY bytes."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or an uncompressed body")
    inflater = zlib.decompressobj(wbits)
    try:
        plain = inflater.decompress(body, MAX_INFER_BODY + 1)
    except zlib.error:
        raise BadInfer(f"the body is not valid {encoding} data") from None
    if len(plain) > MAX_INFER_BODY:
        raise TooLarge(f"the body must be at most {MAX_INFER_BODY} bytes uncompressed")
    if not inflater.eof or inflater.unused_data:
        raise BadInfer(f"the body is not valid {encoding} data (it ends early, or goes on after its end)")
    return plain


def parse_infer(body: bytes, header_length: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """(the request's JSON, its inputs by name) from a JSON body or a JSON header plus binary tensors. Every field is
    checked for its type here, so nothing later meets a string where it expects an object."""
    try:
        split = int(header_length) if header_length is not None else len(body)
        if not 0 < split <= len(body):
            raise ValueError
        request = json.loads(body[:split])
        if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
            raise TypeError
    except (ValueError, TypeError, RecursionError):
        raise BadInfer('the body must be an inference request: {"inputs": [{"name", "datatype", "shape", "data"}, ...]}') from None
    _parameters(request, "the request")
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and o.get("name") == OUTPUT for o in outputs):
        raise BadInfer(f'"outputs" must be a list of objects naming the one output, {{"name": "{OUTPUT}"}}')
    for output in outputs:
        _parameters(output, f"output {OUTPUT!r}")
    blob, offset, inputs = memoryview(body)[split:], 0, {}
    for spec in request["inputs"]:
        if not isinstance(spec, dict):
            raise BadInfer("each input must be an object with name, datatype, shape and data")
        tensor, offset = _tensor(spec, blob, offset)
        if spec["name"] in inputs:
            raise BadInfer(f"input {spec['name']!r} is given twice")
        inputs[spec["name"]] = tensor
    if offset != len(blob):
        raise BadInfer(f"the body has {len(blob) - offset} bytes after the inputs' binary data")
    return request, inputs


def latents_from(inputs: dict[str, np.ndarray], nz: int, max_n: int) -> tuple[int, int] | np.ndarray:
    """(seed, n) for inputs seed [+ n], or the (B, nz) float32 latents of input z."""
    unknown = set(inputs) - {"seed", "n", "z"}
    if unknown or ("z" in inputs) == ("seed" in inputs) or ("n" in inputs and "z" in inputs):
        raise BadInfer('give input "seed" (INT64 [1, 1], with "n" optional) or input "z" (FP32 [batch, nz]), nothing else')
    if "z" in inputs:
        z = inputs["z"]
        if z.dtype != np.float32 or z.ndim != 2 or z.shape[1] != nz or not 1 <= z.shape[0] <= max_n:
            raise BadInfer(f"input z must be FP32 of shape [batch, {nz}], batch 1..{max_n}; got {z.dtype} {list(z.shape)}")
        if not (np.abs(z) <= MAX_ABS_Z).all():  # NaN fails this too
            raise BadInfer(f"input z must hold finite values in [-{MAX_ABS_Z:g}, {MAX_ABS_Z:g}] (latents are standard normal)")
        return np.ascontiguousarray(z)
    seed, n = inputs["seed"], inputs.get("n", np.ones(1, np.int64))
    if seed.size != 1 or n.size != 1 or seed.dtype.kind not in "iu" or n.dtype.kind not in "iu":
        raise BadInfer("inputs seed and n must be one integer each")
    seed, n = int(seed.ravel()[0]), int(n.ravel()[0])
    if not 0 <= seed <= MAX_SEED or not 1 <= n <= max_n:
        raise BadInfer(f"seed must be in [0, 2**63-1] and n in [1, {max_n}]; got {seed}, {n}")
    return seed, n


def wants_binary(request: dict) -> bool:
    """Whether the response carries the images as binary data (the request's types are checked by parse_infer)."""
    outputs = request.get("outputs", [])
    return bool(_parameters(request, "").get("binary_data_output")) or any(_parameters(o, "").get("binary_data") for o in outputs)


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
    output = {"name": OUTPUT, "datatype": "UINT8", "shape": list(images.shape)}
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
        return JSONResponse(await api.load_model(request.path_params["name"], request.scope, request.receive))

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
