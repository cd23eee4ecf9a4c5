"""The per-request work every peer server does, the same as the service's: seed -> latents -> ONNX Runtime -> uint8 -> PNG -> base64.

Imports neither bentoml nor torch: the PyTriton peer runs it in an environment of its own (loadtest/peer_env.py).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.cli import UserError
from contract.artifact import ONNX, ArtifactError, verify
from contract.latents import latents_for_seed
from contract.onnx_cpu import cpu_session_options
from contract.pixels import to_nhwc_uint8
from contract.providers import CPU
from service.images import png_bytes


class PeerModel:
    """The artifact's generator.onnx on ONNX Runtime CPU, with the service's session options."""

    def __init__(self, artifact: Path, threads: int | None = None) -> None:
        try:
            manifest = verify(artifact)  # the file hashes, as the service checks them
        except ArtifactError as e:
            raise UserError(f"{artifact}: {e}") from None
        self.nz = manifest["model"]["nz"]
        self.model = f"{manifest['model']['arch']}:{artifact.name}"
        self.threads = threads or len(os.sched_getaffinity(0))
        self.session = ort.InferenceSession(str(artifact / ONNX), cpu_session_options(self.threads), providers=[CPU])
        self.input_name = self.session.get_inputs()[0].name
        self.images(self.latents(0, 1))  # warm-up, as the service does before it is ready

    def latents(self, seed: int, n: int) -> np.ndarray:
        return latents_for_seed(seed, n, self.nz)  # (n, nz)

    def images(self, latents: np.ndarray) -> np.ndarray:
        """(B, nz) float32 -> (B, H, W, C) uint8."""
        (out,) = self.session.run(None, {self.input_name: latents})  # (B, C, H, W) in [-1, 1]
        return to_nhwc_uint8(out)

    def batch(self, requests: list[tuple[int, int]]) -> list[np.ndarray]:
        """[(seed, n), ...] -> each request's (n, H, W, C) images, from one ONNX Runtime call for all of them."""
        latents = np.concatenate([self.latents(seed, n) for seed, n in requests])
        images = self.images(latents)
        bounds = np.cumsum([0] + [n for _, n in requests])
        return [images[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def add_peer_arguments(parser, max_batch_help: str) -> None:
    """The arguments every peer server takes: ARTIFACT, --port, --threads, --max-batch (default 128)."""
    parser.add_argument("artifact", type=Path, metavar="ARTIFACT", help="model artifact directory (manifest.json + generator.onnx)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port on 127.0.0.1 (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core)")
    parser.add_argument("--max-batch", type=int, default=128, help=f"{max_batch_help} (default: %(default)s)")


def base64_pngs(images: np.ndarray) -> list[str]:
    """(n, H, W, C) uint8 -> n base64 PNG strings, as the service's /sample returns them."""
    return [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]
