"""manifest.json of a model artifact (format contract.artifact.FORMAT): what the service and users read."""

from __future__ import annotations

import platform
import shlex
from datetime import UTC, datetime
from pathlib import Path

from contract.artifact import FORMAT, INPUT_NAME, MANIFEST, MODEL_NAME, OUTPUT_NAME, file_sha256
from contract.latents import LATENTS
from training.models import GeneratorConfig
from training.rundir import package_versions

VERSIONED = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnxconverter-common", "numpy")


def model_section(cfg: GeneratorConfig, opset: int) -> dict:
    """What a loader needs to call the model; the service reads this section."""
    return {
        "arch": cfg.arch,
        "nz": cfg.nz,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "input": INPUT_NAME,  # float32 (batch, nz)
        "output": OUTPUT_NAME,  # float32 (batch, channels, image_size, image_size)
        "output_range": [-1, 1],
        "latents": LATENTS,
        "opset": opset,
    }


def run_commands(run_config: dict) -> list[str]:
    """The command lines that made the run (training.run stores a list under "command"; one line also accepted)."""
    command = run_config.get("command", [])
    return [command] if isinstance(command, str) else [c if isinstance(c, str) else shlex.join(c) for c in command]


def build(
    artifact_dir: Path,
    cfg: GeneratorConfig,
    opset: int,
    parity: dict,
    *,
    run_dir: str,
    run_config: dict,
    config_sha256: str,
    generator_sha256: str,
    export_command: str,
) -> dict:
    files = sorted(p for p in artifact_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    return {
        "format": FORMAT,
        "name": MODEL_NAME,
        "files": {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in files},
        "model": model_section(cfg, opset),
        "versions": {**package_versions(*VERSIONED), "python": platform.python_version()},
        "parity": parity,
        "source": {
            "run_dir": run_dir,
            "config": run_config,
            "config_sha256": config_sha256,
            "generator": cfg.to_dict(),  # rebuilds the eager module (training.models) for a parity re-check
            "generator_sha256": generator_sha256,
        },
        "commands": run_commands(run_config) + [export_command],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
