"""Golden outputs: the images of a few fixed seeds, recorded at export, regenerated wherever the model is served.

Export runs generator.onnx on ONNX Runtime's CPU provider for each case (one batch of n per case, so both
batch size 1 and larger batches are covered), writes the uint8 images to golden.npy (one array, the cases
one after another) and records the cases and the tolerance in the manifest's "golden" section. The service
regenerates them on the provider and file it will serve with (CUDA, fp16) before it becomes ready and
refuses to start, with one line, when a case differs by more than the tolerance: a wrong provider option,
another ONNX Runtime build or a GPU numerics change is caught before any client sees an image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from contract.latents import latents_for_seed

GOLDEN = "golden.npy"
CASES = ((0, 1), (1, 1), (7, 8), (42, 32))  # (seed, n): lone images and batches
Generate = Callable[[np.ndarray], np.ndarray]  # (B, nz) float32 latents -> (B, H, W, C) uint8 images


def golden_images(generate: Generate, nz: int, cases=CASES) -> np.ndarray:
    """Every case's images, one batch per case, concatenated: (sum of n, H, W, C) uint8."""
    return np.concatenate([generate(latents_for_seed(seed, n, nz)) for seed, n in cases])


def section(manifest: dict, reference: str, cases=CASES) -> dict:
    """The manifest's "golden" section for golden.npy written from `cases` by `reference`.

    The tolerance is the parity check's 8-bit limit, read from the manifest's "parity" section."""
    return {
        "file": GOLDEN,
        "cases": [{"seed": seed, "n": n} for seed, n in cases],
        "tolerance_levels": int(manifest["parity"]["limits"]["levels"]),
        "reference": reference,
    }


def compare(model_dir: Path, manifest: dict, generate: Generate) -> dict:
    """Regenerate the manifest's golden cases with `generate`; {"checked", "ok", "max_level_diff", "worst", ...}.

    An artifact exported before golden outputs existed has no section: {"checked": False}."""
    golden = manifest.get("golden")
    if not golden:
        return {"checked": False, "ok": True, "why": "the manifest records no golden outputs (exported before they existed)"}
    expected = np.load(model_dir / golden["file"], allow_pickle=False)  # (sum of n, H, W, C) uint8
    cases = [(c["seed"], c["n"]) for c in golden["cases"]]
    got = golden_images(generate, manifest["model"]["nz"], cases)
    if got.shape != expected.shape:
        return {"checked": True, "ok": False, "why": f"images of shape {got.shape}, the golden ones are {expected.shape}"}
    worst, worst_case, start = -1, None, 0
    for seed, n in cases:
        diff = int(np.abs(got[start : start + n].astype(np.int16) - expected[start : start + n].astype(np.int16)).max())
        if diff > worst:
            worst, worst_case = diff, {"seed": seed, "n": n}
        start += n
    tolerance = golden["tolerance_levels"]
    return {
        "checked": True,
        "ok": worst <= tolerance,
        "cases": len(cases),
        "images": int(sum(n for _, n in cases)),
        "max_level_diff": worst,
        "worst": worst_case,
        "tolerance_levels": tolerance,
        "reference": golden["reference"],
    }


def verdict(result: dict) -> str:
    """One line for a failed compare()."""
    if "worst" not in result:
        return f"golden outputs: {result['why']}"
    w = result["worst"]
    return (
        f"golden outputs: seed {w['seed']} at batch size {w['n']} differs from the export's reference by "
        f"{result['max_level_diff']} levels (tolerance {result['tolerance_levels']}; reference: {result['reference']})"
    )
