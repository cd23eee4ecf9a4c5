"""The loaded generator: a verified stored model on ONNX Runtime, latents in, uint8 images out.

One engine per process that runs the model: the generator service's worker (DCGAN_GENERATOR=service), or the
entry worker itself (DCGAN_GENERATOR=inprocess). Either way it reports on /metrics which model and execution
provider serve, and how many images each ONNX Runtime call held.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from bentoml.exceptions import BentoMLException

from service import metrics
from service.model_source import verified_manifest
from service.runtime import CUDA, open_checked, run_uint8
from service.settings import SETTINGS

logger = logging.getLogger("bentoml.dcgan")


class Engine:
    """`Engine(stored_model).generate(latents)`: (B, nz) float32 -> (B, H, W, C) uint8. Loading verifies and warms up."""

    def __init__(self, stored) -> None:
        self.tag = str(stored.tag)
        self.manifest = verified_manifest(stored.path, self.tag)
        # Loaded, warmed up, and the export's golden images regenerated here within their tolerance.
        self.runtime, self.golden = open_checked(Path(stored.path), self.manifest, SETTINGS.ort_threads)
        if SETTINGS.require_cuda and self.runtime.provider != CUDA:  # the start-up check passed, this worker did not
            raise BentoMLException(f"DCGAN_REQUIRE_CUDA=1 but this worker runs on {self.runtime.provider}")
        # So a dashboard shows a GPU pod serving on CPU, or a model whose golden outputs drifted.
        metrics.GENERATOR_INFO.labels(model=self.tag, model_file=self.runtime.model_file, provider=self.runtime.provider).set(1)
        metrics.GOLDEN_OK.labels(model=self.tag).set(1 if self.golden.get("ok", True) else 0)
        self._batch_images = metrics.BATCH_IMAGES.labels(model=self.tag)

    def generate(self, latents: np.ndarray) -> np.ndarray:
        """(B, nz) float32 latents -> (B, H, W, C) uint8 images; B mixes many clients' requests. Releases the GIL while
        ONNX Runtime runs, so it may run in a thread beside an event loop."""
        images = run_uint8(self.runtime, latents)
        self._batch_images.observe(len(latents))
        return images

    def describe(self, batching: dict) -> dict:
        """What the entry service reports at /info and stamps on responses."""
        return {
            "model": self.tag,
            "manifest": self.manifest,
            "provider": self.runtime.provider,
            "model_file": self.runtime.model_file,
            "ort_threads": self.runtime.threads,
            "generator": SETTINGS.generator,
            "golden": self.golden,
            "batching": batching,
        }

    def loaded_line(self) -> str:
        rt = self.runtime
        return f"serving {self.tag} ({rt.model_file}) on {rt.provider}, threads={rt.threads}"
