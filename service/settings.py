"""Service settings, read once from the environment (BentoML's decorators need them at class definition).

Every knob has a default that serves the committed model on a 2-core CPU box; a deployment changes
them with environment variables, never by editing code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bentoml.exceptions import BentoMLConfigException

from contract.artifact import MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
GENERATOR_MODES = ("inprocess", "service")  # DCGAN_GENERATOR; the first is the default
MAX_SEED = 2**63 - 1  # the signed 64-bit range: a seed any int64-typed client (Go, Java, numpy) can send


def _env_int(name: str, default: int, low: int) -> int:
    # BentoMLConfigException: `bentoml serve` prints it as one line and exits, no traceback.
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BentoMLConfigException(f"environment variable {name}={raw!r} is not an integer") from None
    if value < low:
        raise BentoMLConfigException(f"environment variable {name}={value} must be >= {low}")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw not in ("1", "true", "yes", "0", "false", "no"):
        raise BentoMLConfigException(f"environment variable {name}={raw!r} must be 1/true/yes or 0/false/no")
    return raw in ("1", "true", "yes")


def _env_choice(name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first is the default)."""
    raw = os.environ.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise BentoMLConfigException(f"environment variable {name}={raw!r} must be one of: {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class ServiceSettings:
    model_tag: str  # DCGAN_MODEL: BentoML model store tag to serve
    default_artifact: Path  # DCGAN_DEFAULT_ARTIFACT: registered when the store holds no generator yet
    max_n: int  # DCGAN_MAX_N: most images one request may ask for
    max_batch_size: int  # DCGAN_MAX_BATCH: most images in one ONNX Runtime call (adaptive batching cap; 1 = batching off)
    max_latency_ms: int  # DCGAN_MAX_LATENCY_MS: queueing budget; past it the generator sheds load (503)
    # DCGAN_MAX_BATCH_WAIT_MS: longest an idle generator holds a batch open for more requests. 0: batches form only
    # from what queued while the model was busy; the entry has already merged its waiting requests (coalesce.py).
    max_batch_wait_ms: int
    max_inflight: int  # DCGAN_MAX_INFLIGHT: requests in progress at the entry; more get 429 at once
    # DCGAN_GENERATOR_CALLS: generator calls an entry worker keeps in flight; later requests wait and are merged. Default
    # 1 in process (one ONNX Runtime call at a time uses every core; the queue behind it forms the next batch), 2 with
    # a generator service (one call's round trip overlaps the other's inference)
    generator_calls: int
    ort_threads: int  # DCGAN_ORT_THREADS: ONNX Runtime intra-op threads on CPU
    # DCGAN_DEADLINE_MS: a request whose images could not be done within this is refused at once (503 + Retry-After),
    # so admitted requests finish within about it however heavy the load
    deadline_ms: int
    max_queued_images: int  # DCGAN_MAX_QUEUED_IMAGES: images waiting for the generator per entry worker; past it, 503
    drain_timeout_s: int  # DCGAN_DRAIN_TIMEOUT_S: on SIGTERM, longest wait for admitted requests (service/drain.py)
    body_timeout_s: int  # DCGAN_BODY_TIMEOUT_S: a request body must arrive within this, else 408
    # DCGAN_GENERATOR_RESTART_WAIT_S: how long a call keeps retrying an unreachable generator (a worker restarting)
    generator_restart_wait_s: int
    api_key: str = field(repr=False)  # DCGAN_API_KEY: when set, the generation routes and /info want `Authorization: Bearer <key>`
    require_cuda: bool  # DCGAN_REQUIRE_CUDA: 1 = start-up fails unless ONNX Runtime runs on CUDA (GPU pods)
    # DCGAN_GENERATOR: where the model runs. "inprocess": in the entry worker (no second process, no internal HTTP
    # call; the CPU default). "service": in a generator service of its own, which BentoML batches across entry
    # workers (a GPU shared by several entry workers: the GPU overlay's choice).
    generator: str
    # DCGAN_ACCESS_LOG: 1 = BentoML's access log, one ~580-byte line per request (12 MB a minute at 400 requests/s);
    # off by default: Prometheus metrics count every request and error, and the log cost the entry CPU per request
    access_log: bool
    # DCGAN_TRACING: 1 = OpenTelemetry spans for the API routes (configure an exporter in BentoML's configuration);
    # off by default: with no exporter the spans go nowhere, but each still cost the entry CPU
    tracing: bool

    @classmethod
    def from_env(cls) -> ServiceSettings:
        # sched_getaffinity: the cores this process may run on (a container's cpuset), not the host's count.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        generator = _env_choice("DCGAN_GENERATOR", GENERATOR_MODES)
        return cls(
            model_tag=os.environ.get("DCGAN_MODEL") or f"{MODEL_NAME}:latest",
            default_artifact=Path(os.environ.get("DCGAN_DEFAULT_ARTIFACT") or REPO_ROOT / "artifacts" / "default"),
            max_n=_env_int("DCGAN_MAX_N", 64, 1),
            max_batch_size=_env_int("DCGAN_MAX_BATCH", 128, 1),
            max_latency_ms=_env_int("DCGAN_MAX_LATENCY_MS", 5000, 1),
            max_batch_wait_ms=_env_int("DCGAN_MAX_BATCH_WAIT_MS", 0, 0),
            max_inflight=_env_int("DCGAN_MAX_INFLIGHT", 256, 1),
            generator_calls=_env_int("DCGAN_GENERATOR_CALLS", 1 if generator == "inprocess" else 2, 1),
            ort_threads=_env_int("DCGAN_ORT_THREADS", cores, 1),
            deadline_ms=_env_int("DCGAN_DEADLINE_MS", 2000, 1),
            max_queued_images=_env_int("DCGAN_MAX_QUEUED_IMAGES", 1024, 1),
            drain_timeout_s=_env_int("DCGAN_DRAIN_TIMEOUT_S", 15, 0),
            body_timeout_s=_env_int("DCGAN_BODY_TIMEOUT_S", 5, 1),
            generator_restart_wait_s=_env_int("DCGAN_GENERATOR_RESTART_WAIT_S", 25, 0),
            api_key=os.environ.get("DCGAN_API_KEY", ""),
            require_cuda=_env_bool("DCGAN_REQUIRE_CUDA", False),
            generator=generator,
            access_log=_env_bool("DCGAN_ACCESS_LOG", False),
            tracing=_env_bool("DCGAN_TRACING", False),
        )


SETTINGS = ServiceSettings.from_env()
