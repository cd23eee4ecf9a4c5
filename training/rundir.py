"""The run dir contract (docs/design.md): what training writes and export reads.

    RUN_DIR/
      config.json                  every hyperparameter and the data source (TrainConfig)
      generator.json               GeneratorConfig + sha256 of the weights file it describes
      generator.safetensors        final generator weights (the EMA copy when EMA is on)
      generator_raw.json/.safetensors   the raw (non-averaged) generator, when EMA is on
      checkpoints/step-N.json/.safetensors   full training state for --resume
      samples/*.png                fixed-noise grids
      metrics.jsonl                one JSON line per logging step

Weights are safetensors (no pickle). Every weights file has a JSON sidecar holding its sha256,
checked before the weights are loaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from common.cli import UserError
from common.files import atomic_write_bytes, atomic_write_json, read_json
from contract.artifact import file_sha256
from training.models import GeneratorConfig, build_generator

CONFIG = "config.json"
GENERATOR = "generator"  # generator.json + generator.safetensors
GENERATOR_RAW = "generator_raw"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
METRICS = "metrics.jsonl"


def save_weights(path_stem: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write `<stem>.safetensors` then `<stem>.json` (meta + sha256), each atomically.

    The JSON is written last, so a sidecar always describes a complete weights file.
    """
    blob = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    weights = path_stem.with_suffix(".safetensors")
    atomic_write_bytes(weights, blob)
    atomic_write_json(
        path_stem.with_suffix(".json"),
        {**meta, "weights": weights.name, "weights_sha256": file_sha256(weights), "torch": torch.__version__},
    )


def load_weights(path_stem: Path, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read `<stem>.json`, check the sha256 of `<stem>.safetensors`, then load it. Returns (meta, tensors)."""
    meta = read_json(path_stem.with_suffix(".json"), what)
    weights = path_stem.parent / meta.get("weights", path_stem.name + ".safetensors")
    if not weights.is_file():
        raise UserError(f"{what}: weights file missing: {weights}")
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("weights_sha256"):
        raise UserError(
            f"{what}: {weights} is corrupted (sha256 {digest[:12]}... does not match "
            f"{str(meta.get('weights_sha256'))[:12]}... in {path_stem.with_suffix('.json').name}); "
            "re-run training or restore the file"
        )
    try:
        return meta, st_load(data)
    except SafetensorError as e:
        raise UserError(f"{what}: {weights} is not a valid safetensors file ({e})") from None


def save_generator(run_dir: Path, cfg: GeneratorConfig, module: torch.nn.Module, stem: str = GENERATOR, **extra) -> None:
    meta = {"class": type(module).__name__, "config": cfg.to_dict(), **extra}
    save_weights(Path(run_dir) / stem, module.state_dict(), meta)


def load_generator(run_dir: str | Path, stem: str = GENERATOR) -> tuple[GeneratorConfig, torch.nn.Module, dict]:
    """Rebuild the generator from a run dir alone: cfg from JSON, weights from safetensors (hash-checked)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir not found: {run_dir}")
    if not (run_dir / f"{stem}.json").is_file():
        raise UserError(f"{run_dir} is not a run dir (no {stem}.json); pass the folder that training.run printed")
    meta, tensors = load_weights(run_dir / stem, f"generator in {run_dir}")
    if "config" not in meta:
        raise UserError(f"{run_dir / (stem + '.json')} has no 'config'; it was not written by training.run")
    cfg = GeneratorConfig.from_dict(meta["config"])
    module = build_generator(cfg)
    expected = module.state_dict()
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    bad_shapes = [k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape]
    if missing or unexpected or bad_shapes:
        raise UserError(
            f"{stem}.json does not match the weights in {run_dir}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}, wrong shapes {sorted(bad_shapes)[:3]}"
        )
    module.load_state_dict(tensors)
    module.eval()
    return cfg, module, meta


def package_versions(*names: str) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
