"""The model artifact's files and manifest (docs/design.md), torch-free: export writes it, service/ reads it.

    ARTIFACT_DIR/
      generator.onnx            one file, opset >= 18, input "z" float32 [batch, nz],
                                output "images" float32 [batch, C, H, W] in [-1, 1]
      generator.fp16.onnx       optional: float16 weights, float32 input/output
      generator.torchscript.pt  torch.jit (for libtorch / C++ users)
      generator.pt2             torch.export program
      manifest.json             sha256 of every file, versions, parity figures, source run

Whoever loads an artifact calls `verify(dir)` first: it refuses a dir whose files do not match
the manifest's hashes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT = "dcgan-artifact/1"
MANIFEST = "manifest.json"
ONNX = "generator.onnx"
ONNX_FP16 = "generator.fp16.onnx"
TORCHSCRIPT = "generator.torchscript.pt"
EXPORTED_PROGRAM = "generator.pt2"
INPUT_NAME = "z"
OUTPUT_NAME = "images"
MODEL_NAME = "dcgan-generator"  # name in the BentoML model store


class ArtifactError(Exception):
    """The artifact dir is missing, incomplete or does not match its manifest."""


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(artifact_dir: str | Path) -> dict:
    path = Path(artifact_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no {MANIFEST} in {artifact_dir}: not a model artifact (make one with `python -m export RUN_DIR`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


def verify(artifact_dir: str | Path) -> dict:
    """Check every file listed in the manifest against its sha256. Returns the manifest."""
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    files = manifest.get("files") or {}
    if ONNX not in files:
        raise ArtifactError(f"{artifact_dir / MANIFEST} lists no {ONNX}")
    for name, entry in files.items():
        path = artifact_dir / name
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in the manifest but missing")
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise ArtifactError(
                f"{path} does not match its manifest hash (sha256 {digest[:12]}..., expected {entry['sha256'][:12]}...): "
                "the artifact is corrupted or was edited; re-export it"
            )
    return manifest
