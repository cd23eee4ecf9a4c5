"""The generator service: latents in, uint8 images out, on ONNX Runtime with adaptive batching.

It is the only service that asks for a GPU. Requests from every client of the entry service meet
here: BentoML's dispatcher concatenates their latents along the batch axis (up to DCGAN_MAX_BATCH
images; an idle model waits at most DCGAN_MAX_BATCH_WAIT_MS for more, see service/bentoml_fixes.py) and
runs one ONNX Runtime call. A request that cannot be served within DCGAN_MAX_LATENCY_MS is shed with 503.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException

from contract.pixels import to_uint8
from service.bentoml_fixes import RUNNER_CONNECTION, bound_batch_wait, log_shedding_in_one_line, release_request_timers
from service.drain import install_generator_drain
from service.gc_freeze import freeze_startup_heap
from service.model_source import GeneratorModel, verified_manifest
from service.preflight import check_stored_model
from service.runtime import CUDA, open_runtime, warm_up
from service.settings import SETTINGS

logger = logging.getLogger("bentoml.dcgan")
MODEL = GeneratorModel(SETTINGS.model_tag, default_artifact=SETTINGS.default_artifact)
bound_batch_wait(SETTINGS.max_batch_wait_ms)  # before BentoML builds this service's dispatcher
release_request_timers()  # before BentoML builds this service's app (entry.py imports this module too)
# On /metrics (all workers): which model and execution provider serve, so a dashboard shows a GPU pod serving on CPU.
GENERATOR_INFO = bentoml.metrics.Gauge(
    name="dcgan_generator_info",
    documentation="1 for the model, ONNX file and ONNX Runtime execution provider this generator worker serves with",
    labelnames=["model", "model_file", "provider"],
)
BATCHING = (
    {"batchable": True, "max_batch_size": SETTINGS.max_batch_size, "max_latency_ms": SETTINGS.max_latency_ms}
    if SETTINGS.max_batch_size > 1
    else {"batchable": False}
)


@bentoml.service(
    name="generator",
    resources={"gpu": 1},
    workers=1,  # one process owns the session; ONNX Runtime parallelises inside it
    traffic={"timeout": 30},
    runner_connection=RUNNER_CONNECTION,  # service/bentoml_fixes.py (4)
)
class GeneratorService:
    model = MODEL

    @bentoml.on_deployment
    def check_artifact() -> None:
        """Runs once in the `bentoml serve` process before any worker starts: a bad artifact stops start-up here."""
        logger.info("start-up check: %s", check_stored_model(MODEL.resolve()))  # service/preflight.py

    def __init__(self) -> None:
        log_shedding_in_one_line()
        stored = self.model
        self.tag = str(stored.tag)
        self.manifest = verified_manifest(stored.path, self.tag)
        self.runtime = open_runtime(Path(stored.path), self.manifest, SETTINGS.ort_threads)
        warm_up(self.runtime, self.manifest)
        if SETTINGS.require_cuda and self.runtime.provider != CUDA:  # the start-up check passed, this worker did not
            raise BentoMLException(f"DCGAN_REQUIRE_CUDA=1 but this generator worker runs on {self.runtime.provider}")
        GENERATOR_INFO.labels(model=self.tag, model_file=self.runtime.model_file, provider=self.runtime.provider).set(1)
        install_generator_drain(SETTINGS.drain_timeout_s)  # SIGTERM: serve until the entry has drained (service/drain.py)
        frozen = freeze_startup_heap()
        logger.info(
            "serving %s (%s) on %s, threads=%s; %d start-up objects frozen out of full GCs",
            self.tag,
            self.runtime.model_file,
            self.runtime.provider,
            self.runtime.threads,
            frozen,
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
