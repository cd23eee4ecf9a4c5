"""Service settings, read once from the environment (BentoML's decorators need them at class definition).

Every knob has a default that serves the committed model on a 2-core CPU box; a deployment changes
them with environment variables, never by editing code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bentoml.exceptions import BentoMLConfigException

from contract.artifact import MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    generator_calls: int  # DCGAN_GENERATOR_CALLS: generator calls an entry worker keeps in flight; later requests wait and are merged
    ort_threads: int  # DCGAN_ORT_THREADS: ONNX Runtime intra-op threads on CPU

    @classmethod
    def from_env(cls) -> ServiceSettings:
        # sched_getaffinity: the cores this process may run on (a container's cpuset), not the host's count.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cls(
            model_tag=os.environ.get("DCGAN_MODEL") or f"{MODEL_NAME}:latest",
            default_artifact=Path(os.environ.get("DCGAN_DEFAULT_ARTIFACT") or REPO_ROOT / "artifacts" / "default"),
            max_n=_env_int("DCGAN_MAX_N", 64, 1),
            max_batch_size=_env_int("DCGAN_MAX_BATCH", 128, 1),
            max_latency_ms=_env_int("DCGAN_MAX_LATENCY_MS", 5000, 1),
            max_batch_wait_ms=_env_int("DCGAN_MAX_BATCH_WAIT_MS", 0, 0),
            max_inflight=_env_int("DCGAN_MAX_INFLIGHT", 256, 1),
            generator_calls=_env_int("DCGAN_GENERATOR_CALLS", 2, 1),
            ort_threads=_env_int("DCGAN_ORT_THREADS", cores, 1),
        )


SETTINGS = ServiceSettings.from_env()
