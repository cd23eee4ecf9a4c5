"""The generator service: latents in, uint8 images out, on ONNX Runtime with adaptive batching.

It is the only service that asks for a GPU. Requests from every client of the entry service meet
here: BentoML's dispatcher concatenates their latents along the batch axis (up to DCGAN_MAX_BATCH
images; an idle model waits at most DCGAN_MAX_BATCH_WAIT_MS for more, see service/batching.py) and
runs one ONNX Runtime call. A request that cannot be served within DCGAN_MAX_LATENCY_MS is shed with 503.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable

from export.artifact import to_uint8
from service.batching import bound_batch_wait
from service.heap import freeze_startup_heap
from service.model_source import GeneratorModel, verified_manifest
from service.request_timer import release_request_timers
from service.runtime import open_runtime, warm_up
from service.settings import SETTINGS

logger = logging.getLogger("bentoml.dcgan")
MODEL = GeneratorModel(SETTINGS.model_tag, default_artifact=SETTINGS.default_artifact)
bound_batch_wait(SETTINGS.max_batch_wait_ms)  # before BentoML builds this service's dispatcher
release_request_timers()  # before BentoML builds this service's app (entry.py imports this module too)
BATCHING = (
    {"batchable": True, "max_batch_size": SETTINGS.max_batch_size, "max_latency_ms": SETTINGS.max_latency_ms}
    if SETTINGS.max_batch_size > 1
    else {"batchable": False}
)


class OneLineWhenShedding(logging.Filter):
    """BentoML logs a full traceback for every request its dispatcher sheds; under overload that buries the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ServiceUnavailable):
            record.msg, record.args = "shed a request with 503: %s", (exc,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


@bentoml.service(
    name="generator",
    resources={"gpu": 1},
    workers=1,  # one process owns the session; ONNX Runtime parallelises inside it
    traffic={"timeout": 30},
    # BentoML's inter-service client replaces its connection pool every 100 requests or 300 s and
    # closes the old one under requests still using it ("Cannot write to closing transport",
    # BentoML #4971). Both services run in one pod, so there is nothing to rebalance: never replace it.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0**9},
)
class Generator:
    model = MODEL

    @bentoml.on_deployment
    def check_artifact() -> None:
        """Runs once in the `bentoml serve` process before any worker starts: a bad artifact stops start-up here."""
        stored = MODEL.resolve()
        verified_manifest(stored.path, str(stored.tag))

    def __init__(self) -> None:
        logging.getLogger("bentoml._internal.server.http_app").addFilter(OneLineWhenShedding())
        stored = self.model
        self.tag = str(stored.tag)
        self.manifest = verified_manifest(stored.path, self.tag)
        self.runtime = open_runtime(Path(stored.path), self.manifest, SETTINGS.ort_threads)
        warm_up(self.runtime, self.manifest)
        frozen = freeze_startup_heap()
        logger.info(
            "serving %s (%s) on %s, threads=%s; %d start-up objects frozen out of full GCs",
            self.tag, self.runtime.model_file, self.runtime.provider, self.runtime.threads, frozen,
        )

    # DCGAN_MAX_BATCH=1 turns batching off (BentoML's batchable API needs a cap of 2 or more): each call runs alone.
    @bentoml.api(**BATCHING)
    def generate(self, latents: np.ndarray) -> np.ndarray:
        """(B, nz) float32 latents -> (B, H, W, C) uint8 images; B mixes many clients' requests."""
        (images,) = self.runtime.session.run([self.runtime.output_name], {self.runtime.input_name: latents})  # (B, C, H, W)
        # uint8 here, not in the entry: 4x fewer bytes cross the process boundary.
        return np.ascontiguousarray(to_uint8(images).transpose(0, 2, 3, 1))

    @bentoml.api
    def describe(self) -> dict:
        """What the entry service reports at /info and stamps on responses."""
        return {
            "model": self.tag,
            "manifest": self.manifest,
            "provider": self.runtime.provider,
            "model_file": self.runtime.model_file,
            "ort_threads": self.runtime.threads,
            "batching": {
                "max_batch_size": SETTINGS.max_batch_size,
                "max_latency_ms": SETTINGS.max_latency_ms,
                "max_batch_wait_ms": SETTINGS.max_batch_wait_ms,
            },
        }
