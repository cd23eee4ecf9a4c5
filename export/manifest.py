"""manifest.json of a model artifact (format contract.artifact.FORMAT): what the service and users read.

The manifest is the one description of the model; what else describes it is derived from it:

    describe(...)        the sections known before any file is written: model, source, commands, versions
    onnx_metadata(m)     generator.onnx's metadata props (written from describe()'s result)
    build(dir, m, ...)   the whole manifest: describe()'s sections + files, parity and the "golden" section
                         (contract/golden_outputs.py, its tolerance the parity check's 8-bit limit)
    contract.store       the BentoML store entry's labels and metadata, read from the manifest (torch-free)
"""

from __future__ import annotations

import platform
import shlex
from datetime import UTC, datetime
from pathlib import Path

from contract import golden_outputs
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


def describe(
    cfg: GeneratorConfig,
    opset: int,
    *,
    run_dir: str,
    run_config: dict,
    config_sha256: str,
    generator_sha256: str,
    export_command: str,
) -> dict:
    """The manifest's sections that describe the model and its origin, known before any file is written."""
    return {
        "format": FORMAT,
        "name": MODEL_NAME,
        "model": model_section(cfg, opset),
        "versions": {**package_versions(*VERSIONED), "python": platform.python_version()},
        "source": {
            "run_dir": run_dir,
            "config": run_config,
            "config_sha256": config_sha256,
            "generator": cfg.to_dict(),  # rebuilds the eager module (training.models) for a parity re-check
            "generator_sha256": generator_sha256,
        },
        "commands": run_commands(run_config) + [export_command],
    }


def onnx_metadata(manifest: dict) -> dict[str, str]:
    """generator.onnx's metadata props: the manifest's model and source, as the strings ONNX props hold."""
    model, source = manifest["model"], manifest["source"]
    low, high = model["output_range"]
    return {  # this order is the order of the props in the file
        "arch": model["arch"],
        "nz": str(model["nz"]),
        "image_size": str(model["image_size"]),
        "channels": str(model["channels"]),
        "ngf": str(source["generator"]["ngf"]),
        "components": str(source["generator"]["components"]),
        "output_range": f"[{low}, {high}]",
        "latents": model["latents"],
        "source_run": source["run_dir"],
        "config_sha256": source["config_sha256"],
        "generator_sha256": source["generator_sha256"],
    }


def files_section(artifact_dir: Path) -> dict:
    """sha256 and size of every file in the artifact but the manifest itself."""
    files = sorted(p for p in artifact_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    return {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in files}


def build(artifact_dir: Path, description: dict, parity: dict, golden_reference: str) -> dict:
    """The whole manifest of the files in artifact_dir: describe()'s sections, files, parity and golden."""
    manifest = {
        **description,
        "files": files_section(artifact_dir),
        "parity": parity,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return {**manifest, "golden": golden_outputs.section(manifest, golden_reference)}
