"""The generator service (DCGAN_GENERATOR=service): latents in, uint8 images out, on ONNX Runtime with adaptive batching.

It is the only service that asks for a GPU. Requests from every entry worker meet
here: BentoML's dispatcher concatenates their latents along the batch axis (up to DCGAN_MAX_BATCH
images; an idle model waits at most DCGAN_MAX_BATCH_WAIT_MS for more, see service/bentoml_fixes.py) and
runs one ONNX Runtime call. A request that cannot be served within DCGAN_MAX_LATENCY_MS is shed with 503.
"""

from __future__ import annotations

import logging

import bentoml
import numpy as np

from service.bentoml_fixes import RUNNER_CONNECTION
from service.drain import install_generator_drain
from service.gc_freeze import freeze_startup_heap
from service.model_engine import Engine
from service.model_source import GeneratorModel
from service.settings import SETTINGS

logger = logging.getLogger("bentoml.dcgan")
# The served models (DCGAN_MODELS), the default first: only it may be registered from the committed artifact.
MODELS = tuple(
    GeneratorModel(spec, default_artifact=SETTINGS.default_artifact if i == 0 else None) for i, spec in enumerate(SETTINGS.models)
)
MODEL = MODELS[0]  # a generator service serves one model (service/settings.py refuses more)
# BentoML's workarounds (service/bentoml_fixes.py) are installed by service/entry.py, which imports this module.
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

    def __init__(self) -> None:
        self.engine = Engine(self.model)
        self.engine.publish()
        install_generator_drain(SETTINGS.drain_timeout_s)  # SIGTERM: serve until the entry has drained (service/drain.py)
        frozen = freeze_startup_heap()
        logger.info("%s; %d start-up objects frozen out of full GCs", self.engine.loaded_line(), frozen)

    # DCGAN_MAX_BATCH=1 turns batching off (BentoML's batchable API needs a cap of 2 or more): each call runs alone.
    @bentoml.api(**BATCHING)
    def generate(self, latents: np.ndarray) -> np.ndarray:
        """(B, nz) float32 latents -> (B, H, W, C) uint8 images; B mixes many clients' requests."""
        return self.engine.generate(latents)

    @bentoml.api
    def describe(self) -> dict:
        """What the entry service reports at /info and stamps on responses."""
        return self.engine.describe(
            {
                "max_batch_size": SETTINGS.max_batch_size,
                "max_latency_ms": SETTINGS.max_latency_ms,
                "max_batch_wait_ms": SETTINGS.max_batch_wait_ms,
            }
        )
