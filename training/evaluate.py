"""`python -m training.evaluate RUN_DIR`: quality and coverage of an MNIST generator, as numbers.

With the project's MNIST classifier (training/classifier.py, artifacts/mnist-classifier/):
  classes    classes covered, of 10: classes holding at least half the uniform share of samples
  class KL   KL(class histogram || uniform), nats; 0 is perfectly balanced
  score      Inception-Score-like: exp E KL(p(y|x) || p(y)) with our classifier; 10 at best
  unclear    share of samples whose prediction entropy is above 0.5 nats (no one clear digit)
  FD         Frechet distance in the classifier's 128-d penultimate features, against the
             1,000 held-out real digits (the FID formula, not the Inception-v3 FID)
The floor: the same figures for as many real training digits (the classifier's training split);
the header also gives the score and unclear share of the 1,000 held-out digits, which the classifier
never trained on (alike: the floor is not the classifier's memory of its training set).
A generator's FD is compared as a multiple of the floor. Each generator is measured on --draws
independent sets of latents (seeds --seed, --seed+1, ...) and the table gives the mean, with the
range of FD/floor: with 4,000 samples, draws of one generator differed by up to a quarter in FD.

Examples:
  python -m training.evaluate runs/default-v1                 # generator, generator_raw, generator_last
  python -m training.evaluate runs/default-v1 --samples 4000 --json eval.json
  python -m training.evaluate runs/default-v1 --draws 1 --seed 7  # one set of latents, seed 7
  python -m training.evaluate runs/default-v1 --latent-scale 0.8  # latents from N(0, 0.8^2 I): the truncation trick
  python -m training.evaluate runs/default-v1 --unclear-grid unclear.png  # look at the samples counted unclear
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import atomic_write_json
from contract.artifact import MANIFEST, ONNX, ArtifactError, verify
from contract.providers import CPU
from training import rundir
from training.classifier import DEFAULT_DIR, bundled_digits, load_classifier, predict, to_input
from training.metrics import (
    class_histogram,
    classes_covered,
    classifier_score,
    confused_pairs,
    feature_statistics,
    frechet_distance,
    kl_to_uniform,
    unclear_mask,
    unclear_share,
)
from training.plots import save_grid

GENERATOR_LAST = "generator_last"  # the last EMA generator, where generator.* holds the best evaluated one
STEMS = (rundir.GENERATOR, rundir.GENERATOR_RAW, GENERATOR_LAST)
EVALUATION = "evaluation.json"  # written into the run dir


class DigitEvaluator:
    """Class coverage, class KL, classifier score and classifier-feature FD of (N, 1, H, W) images."""

    def __init__(self, classifier_dir: str | Path = DEFAULT_DIR, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model, self.meta = load_classifier(classifier_dir)
        self.model.to(self.device)
        images, labels = bundled_digits()
        self.train_images = images[self.meta["train_indices"]]  # (4000, 1, 32, 32) uint8
        held = images[self.meta["held_out_indices"]]
        held_probs, held_features = predict(self.model, to_input(held).to(self.device))
        self.reference = feature_statistics(held_features)
        self.held_out = {
            "score": round(classifier_score(held_probs), 4),
            "unclear": round(unclear_share(held_probs), 4),
            "samples": len(held),
        }

    def figures(self, images: torch.Tensor) -> dict:
        """images: (N, 1, H, W) in [-1, 1], any device; resized to the classifier's 32x32 when needed."""
        if images.shape[1] != 1:
            raise UserError(f"the MNIST classifier takes 1-channel images; these have {images.shape[1]} channels")
        if images.shape[-1] != 32:
            images = F.interpolate(images.float(), size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        probs, features = predict(self.model, images.to(self.device))
        counts = class_histogram(probs.argmax(1), 10)
        return {
            "classes": classes_covered(counts),
            "class_kl": round(kl_to_uniform(counts), 5),
            "score": round(classifier_score(probs), 4),
            "unclear": round(unclear_share(probs), 4),
            "fd": round(frechet_distance(feature_statistics(features), self.reference), 4),
            "histogram": counts.tolist(),
            "samples": len(images),
        }

    def floor(self, n: int) -> dict:
        """The figures of `n` real training digits (a fixed random subset when n < 4,000)."""
        if n > len(self.train_images):
            raise UserError(f"the floor uses at most {len(self.train_images)} real digits; ask for fewer samples")
        idx = torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(0))[:n]
        return self.figures(to_input(self.train_images[idx]))


@torch.no_grad()
def generate(
    G: torch.nn.Module, nz: int, n: int, seed: int, device: torch.device, batch: int = 500, latent_scale: float = 1.0
) -> torch.Tensor:
    """n samples from fixed latents (own torch.Generator: no global RNG touched), z ~ N(0, latent_scale^2 I).
    (n, C, H, W)"""
    g = torch.Generator().manual_seed(seed)
    z = latent_scale * torch.randn(n, nz, generator=g)
    G.eval()
    return torch.cat([G(chunk.to(device)) for chunk in z.split(batch)])


class OnnxGenerator:
    """A model artifact's hash-checked generator.onnx on ONNX Runtime's CPU provider, called like the torch generator:
    the images the service serves, evaluated without the run dir (an artifact holds no safetensors weights)."""

    def __init__(self, session) -> None:
        self.session, self.input = session, session.get_inputs()[0].name

    @classmethod
    def load(cls, artifact: Path):
        import onnxruntime as ort

        try:
            manifest = verify(artifact)
        except ArtifactError as e:
            raise UserError(f"{artifact}: {e}") from None
        session = ort.InferenceSession(str(artifact / ONNX), providers=[CPU])
        return SimpleNamespace(nz=manifest["model"]["nz"]), cls(session), {"step": manifest["source"]["config"].get("steps")}

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, z: torch.Tensor) -> torch.Tensor:  # (B, nz) -> (B, C, H, W) in [-1, 1], on z's device
        (images,) = self.session.run(None, {self.input: z.cpu().numpy().astype(np.float32)})
        return torch.from_numpy(images).to(z.device)


class CoverageMonitor:
    """The trainer's collapse detector: cheap figures of a generator on fixed latents."""

    def __init__(self, nz: int, device: torch.device, samples: int = 2000, seed: int = 2024):
        self.evaluator = DigitEvaluator(device=device)
        self.nz, self.device, self.samples, self.seed = nz, device, samples, seed
        self.floor_fd = self.evaluator.floor(samples)["fd"]

    def figures(self, G: torch.nn.Module) -> dict:
        f = self.evaluator.figures(generate(G, self.nz, self.samples, self.seed, self.device))
        f.pop("samples")
        f["fd_over_floor"] = round(f["fd"] / self.floor_fd, 3)
        return f


def mean_figures(draws: list[dict]) -> dict:
    """One row from the figures of several latent draws: the fewest classes covered, the mean of
    class KL, score and FD, the summed histogram, and each draw's FD."""
    mean = lambda key: sum(d[key] for d in draws) / len(draws)  # noqa: E731
    return {
        "classes": min(d["classes"] for d in draws),
        "class_kl": round(mean("class_kl"), 5),
        "score": round(mean("score"), 4),
        "unclear": round(mean("unclear"), 4),
        "fd": round(mean("fd"), 4),
        "histogram": [sum(c) for c in zip(*(d["histogram"] for d in draws))],
        "samples": sum(d["samples"] for d in draws),
        "fd_draws": [d["fd"] for d in draws],
    }


def format_table(rows: dict[str, dict], floor_fd: float) -> str:
    lines = [
        f"{'':<30} {'classes':>7} {'class KL':>9} {'score':>7} {'unclear':>8} {'FD':>9} {'FD/floor':>9} {'range':>13} {'step':>6}",
        "-" * 107,
    ]
    for name, f in rows.items():
        fds = f.get("fd_draws", [f["fd"]])
        spread = f"{min(fds) / floor_fd:.2f}..{max(fds) / floor_fd:.2f}" if len(fds) > 1 else ""
        lines.append(
            f"{name:<30} {f['classes']:>4}/10 {f['class_kl']:>9.4f} {f['score']:>7.3f} "
            f"{f['unclear']:>7.1%} {f['fd']:>9.3f} "
            f"{f['fd'] / floor_fd:>8.2f}x {spread:>13} {str(f.get('step', '')):>6}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m training.evaluate",
        description="Evaluate the MNIST generators of a run dir with the project's classifier: classes covered (of "
        "10), KL(class histogram || uniform), classifier score, and Frechet distance in classifier "
        "features against held-out real digits, beside the same figures for real training digits "
        "(the floor). Prints a table and writes RUN_DIR/evaluation.json.",
        epilog=__doc__.split("Examples:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run dir written by `python -m training.run`, or a model artifact (its generator.onnx on ONNX Runtime CPU; needs --json)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=4000,
        help="generated samples per generator, and real digits for the floor (default: 4000, at most 4000)",
    )
    p.add_argument(
        "--draws",
        type=int,
        default=3,
        help="independent sets of --samples latents per generator; the table gives the mean and the range of FD/floor (default: 3)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first draw's latents; draw i uses seed + i (default: 0)")
    p.add_argument("--classifier", default=str(DEFAULT_DIR), metavar="DIR", help="classifier folder (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="where to write the figures (default: RUN_DIR/evaluation.json)")
    p.add_argument(
        "--latent-scale",
        type=float,
        default=1.0,
        metavar="PSI",
        help="draw the latents from N(0, PSI^2 I) instead of the N(0, I) the generator was trained on and "
        "is served with: the scaling form of the truncation trick, PSI < 1 trades variety for "
        "typicality (default: 1)",
    )
    p.add_argument(
        "--unclear-grid",
        metavar="PNG",
        help="also write a grid of up to 64 of the samples counted unclear (the first ones of the first "
        "draw of generator.*, in latent order) and print the class pairs the unclear samples sit between",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="(default: cpu)")
    return p


def write_unclear_grid(path: Path, evaluator: DigitEvaluator, images: torch.Tensor) -> dict:
    """Up to 64 of `images`' unclear samples as a PNG grid; what was shown, and the confused class pairs."""
    probs, _ = predict(evaluator.model, images.to(evaluator.device))
    unclear = unclear_mask(probs).nonzero().flatten()
    if len(unclear):
        save_grid(path, images[unclear[:64]])
    return {"path": str(path), "unclear": len(unclear), "of": len(images), "shown": min(64, len(unclear)), "pairs": confused_pairs(probs)}


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if args.samples < 100:
        raise UserError(f"--samples must be >= 100 for a meaningful Frechet distance, got {args.samples}")
    if args.draws < 1:
        raise UserError(f"--draws must be >= 1, got {args.draws}")
    if not 0 < args.latent_scale <= 10:
        raise UserError(f"--latent-scale must be in (0, 10], got {args.latent_scale}; 1 draws the latents as trained")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    artifact = (run_dir / MANIFEST).is_file()
    if artifact and not args.json:
        raise UserError(f"{run_dir} is a model artifact, whose folder is not written to: pass --json FILE")
    stems = [ONNX] if artifact else [s for s in STEMS if (run_dir / f"{s}.json").is_file()]
    if not run_dir.is_dir() or not stems:
        raise UserError(
            f"{run_dir} holds no generator ({', '.join(s + '.json' for s in STEMS)}) and is no model artifact ({MANIFEST}); "
            "pass the folder that training.run or export printed"
        )
    device = torch.device(args.device)
    evaluator = DigitEvaluator(args.classifier, device)
    rows = {"real training digits (floor)": evaluator.floor(args.samples)}
    grid = None
    for stem in stems:
        cfg, G, meta = OnnxGenerator.load(run_dir) if artifact else rundir.load_generator(run_dir, stem)
        G = G.to(device)
        draws = []
        for i in range(args.draws):
            images = generate(G, cfg.nz, args.samples, args.seed + i, device, latent_scale=args.latent_scale)
            draws.append(evaluator.figures(images))
            if args.unclear_grid and grid is None:
                grid = {"generator": stem, **write_unclear_grid(Path(args.unclear_grid), evaluator, images)}
        label = f"{stem} on ONNX Runtime CPU" if artifact else f"{stem} ({'EMA' if meta.get('ema') else 'raw'})"
        rows[label] = {**mean_figures(draws), "step": meta.get("step")}
    floor_fd = rows["real training digits (floor)"]["fd"]
    scaled = "" if args.latent_scale == 1 else f", latents scaled by {args.latent_scale}"
    print(
        f"{run_dir}: {args.samples} samples per draw, mean of {args.draws} draw(s) (latent seeds {args.seed}.."
        f"{args.seed + args.draws - 1}){scaled}; FD against {len(evaluator.meta['held_out_indices'])} held-out real digits; "
        f"classifier held-out accuracy {evaluator.meta['held_out_accuracy']:.4f}; the held-out digits score "
        f"{evaluator.held_out['score']:.3f} with {evaluator.held_out['unclear']:.1%} unclear"
    )
    print(format_table(rows, floor_fd))
    if grid:
        pairs = ", ".join(f"{a}/{b} {n}" for a, b, n in grid["pairs"]) or "none"
        where = f"{grid['shown']} of them in {grid['path']}" if grid["shown"] else "no grid written"
        print(
            f"{grid['generator']}, draw 1: {grid['unclear']} of {grid['of']} samples unclear ({where}); "
            f"the class pairs they sit between, most common first: {pairs}"
        )
    out = Path(args.json) if args.json else run_dir / EVALUATION
    atomic_write_json(
        out,
        {
            "run_dir": str(run_dir),
            "samples": args.samples,
            "seed": args.seed,
            "draws": args.draws,
            "latent_scale": args.latent_scale,
            "classifier": str(args.classifier),
            "floor_fd": floor_fd,
            "held_out_real": evaluator.held_out,
            "figures": rows,
            "unclear_grid": grid,
            "command": "python -m training.evaluate " + " ".join(sys.argv[1:] if argv is None else argv),
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
