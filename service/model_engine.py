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
        self.name, _, self.version = self.tag.partition(":")
        self.onnx_bytes = (Path(stored.path) / self.runtime.model_file).stat().st_size
        self._batch_images = metrics.BATCH_IMAGES.labels(model=self.name)

    def publish(self, serving: bool = True) -> None:
        """Show on /metrics that this worker serves with this version (1), or no longer does (0, after a swap): so a
        dashboard shows a GPU pod serving on CPU, a model whose golden outputs drifted, or a swap that happened."""
        rt = self.runtime
        metrics.GENERATOR_INFO.labels(model=self.name, version=self.version, model_file=rt.model_file, provider=rt.provider).set(
            1 if serving else 0
        )
        if serving:
            metrics.GOLDEN_OK.labels(model=self.name).set(1 if self.golden.get("ok", True) else 0)
            metrics.ONNX_BYTES.labels(model=self.name).set(self.onnx_bytes)

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
            "name": self.name,
            "version": self.version,
            "onnx_bytes": self.onnx_bytes,
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
