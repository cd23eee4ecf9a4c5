"""The generator as a torch module run eagerly, for the baseline server and the benchmark.

A run dir (generator.json + generator.safetensors) gives the trained nn.Module itself; a model
artifact gives its torch.export program (generator.pt2) as a module, executed op by op, for when
only the artifact is at hand (the committed default ships without its run dir).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from common.cli import UserError
from contract.artifact import EXPORTED_PROGRAM, ArtifactError, verify
from training.rundir import load_generator


@dataclass(frozen=True)
class EagerGenerator:
    module: torch.nn.Module  # (B, nz) float32 -> (B, C, H, W) in [-1, 1]
    nz: int
    source: str  # what was loaded, for reports


def load_eager(path: str | Path) -> EagerGenerator:
    """A run dir -> its nn.Module; a model artifact -> its hash-checked generator.pt2 as a module."""
    path = Path(path)
    if (path / "generator.json").is_file():
        cfg, module, _ = load_generator(path)
        return EagerGenerator(module, cfg.nz, f"nn.Module from run dir {path}")
    try:
        manifest = verify(path)
    except ArtifactError as e:
        raise UserError(f"{path} is neither a run dir (no generator.json) nor a usable model artifact: {e}") from None
    if EXPORTED_PROGRAM not in manifest["files"]:
        raise UserError(f"artifact {path} has no {EXPORTED_PROGRAM}; pass the training run dir instead")
    module = torch.export.load(str(path / EXPORTED_PROGRAM)).module()
    return EagerGenerator(module, manifest["model"]["nz"], f"torch.export program {path / EXPORTED_PROGRAM}, run eagerly")
