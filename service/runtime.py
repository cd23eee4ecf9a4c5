"""ONNX Runtime session for the generator: CUDA when it really loads, else CPU with deliberate threads."""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bentoml.exceptions import BentoMLException

from contract import golden_outputs
from contract.artifact import ONNX, ONNX_FP16
from contract.latents import latents_for_seed
from contract.onnx_cpu import cpu_session_options
from contract.pixels import to_nhwc_uint8
from contract.providers import CPU, CUDA

logger = logging.getLogger("bentoml.dcgan")


@dataclass(frozen=True)
class Runtime:
    session: ort.InferenceSession
    provider: str  # the provider the session actually runs on
    model_file: str  # generator.onnx, or generator.fp16.onnx on CUDA
    threads: int | None  # intra-op threads on CPU; None on CUDA
    input_name: str
    output_name: str


def cuda_driver_present() -> bool:
    """onnxruntime-gpu lists CUDA as available on any machine; without a driver, trying it only logs errors."""
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def open_runtime(model_dir: Path, manifest: dict, cpu_threads: int, fp16: bool = True) -> Runtime:
    files = manifest["files"]
    if CUDA in ort.get_available_providers() and cuda_driver_present():
        name = ONNX_FP16 if fp16 and ONNX_FP16 in files else ONNX
        # The CUDA provider has no library path to CUDA/cuDNN installed as pip wheels
        # (onnxruntime-gpu[cuda,cudnn], as in the bento image): load them first.
        ort.preload_dlls()
        session = ort.InferenceSession(str(model_dir / name), providers=[CUDA, CPU])
        if session.get_providers()[0] == CUDA:
            return _checked(Runtime(session, CUDA, name, None, *_io_names(session)), manifest)
        logger.warning("a CUDA driver is present but ONNX Runtime could not load its CUDA provider; serving on CPU")
    session = ort.InferenceSession(str(model_dir / ONNX), cpu_session_options(cpu_threads), providers=[CPU])
    return _checked(Runtime(session, CPU, ONNX, cpu_threads, *_io_names(session)), manifest)


def _io_names(session: ort.InferenceSession) -> tuple[str, str]:
    return session.get_inputs()[0].name, session.get_outputs()[0].name


def _checked(rt: Runtime, manifest: dict) -> Runtime:
    """The ONNX file must be what the manifest says it is: names, latent size."""
    m = manifest["model"]
    (inp,) = rt.session.get_inputs()
    if (rt.input_name, rt.output_name) != (m["input"], m["output"]) or inp.shape[1] != m["nz"]:
        raise BentoMLException(
            f"{rt.model_file} takes {rt.input_name}{inp.shape} -> {rt.output_name}, but the manifest says "
            f"{m['input']}[batch, {m['nz']}] -> {m['output']}; re-export the artifact"
        )
    return rt


def run_uint8(rt: Runtime, latents: np.ndarray) -> np.ndarray:
    """(B, nz) float32 latents -> (B, H, W, C) uint8 images. Releases the GIL while ONNX Runtime runs."""
    (images,) = rt.session.run([rt.output_name], {rt.input_name: latents})  # (B, C, H, W) in [-1, 1]
    return to_nhwc_uint8(images)


def check_golden(rt: Runtime, model_dir: Path, manifest: dict) -> dict:
    """The golden outputs regenerated on this runtime (contract/golden_outputs.py); BentoMLException (one line) out of
    tolerance."""
    result = {
        **golden_outputs.compare(model_dir, manifest, lambda z: run_uint8(rt, z)),
        "provider": rt.provider,
        "model_file": rt.model_file,
    }
    if not result["ok"]:
        raise BentoMLException(f"{golden_outputs.verdict(result)}, on {rt.provider} with {rt.model_file}")
    return result


def open_checked(model_dir: Path, manifest: dict, cpu_threads: int) -> tuple[Runtime, dict]:
    """open_runtime, one warm-up inference, and the golden outputs: (runtime, the golden check's result).

    On CUDA the float16 file serves when its golden outputs are within tolerance, else the float32 one does (a
    warning says so); out of tolerance on float32, BentoMLException with one line."""
    rt = open_runtime(model_dir, manifest, cpu_threads)
    warm_up(rt, manifest)
    try:
        return rt, check_golden(rt, model_dir, manifest)
    except BentoMLException as e:
        if rt.model_file != ONNX_FP16:
            raise
        logger.warning("%s; serving %s instead", e, ONNX)
    rt = open_runtime(model_dir, manifest, cpu_threads, fp16=False)
    warm_up(rt, manifest)
    return rt, check_golden(rt, model_dir, manifest)


def warm_up(rt: Runtime, manifest: dict) -> None:
    """One real inference before the service reports ready: loads kernels, allocates arenas, checks output shape."""
    m = manifest["model"]
    z = latents_for_seed(0, 1, m["nz"])  # (1, nz)
    (images,) = rt.session.run([rt.output_name], {rt.input_name: z})  # (1, C, H, W)
    want = (1, m["channels"], m["image_size"], m["image_size"])
    if images.shape != want or not np.isfinite(images).all():
        raise BentoMLException(f"warm-up inference of {rt.model_file} returned shape {images.shape}, expected {want} and finite values")
