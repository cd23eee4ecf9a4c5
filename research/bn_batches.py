"""`python -m research.bn_batches`: how few latents re-estimate the generator's BatchNorm statistics.

The trainer recomputes a generator's BatchNorm statistics before each sample grid, evaluation and saved
generator (training/ema.py: averaged weights need statistics of their own). This measures, on the committed
default model, what fewer latents than the 16 batches of 128 it once took change in what users get.

The default model's generator is rebuilt from artifacts/default/generator.torchscript.pt, whose state dict
is its run's generator.safetensors bit for bit (checked: its sha256 is the manifest's generator_sha256).
Its statistics are recomputed from the first K batches of the trainer's latent stream (seed 1234, batches
of 128; K = 16 reproduces the committed statistics exactly, also checked) and each K is compared with the
committed model (and so are 16 batches from other latent seeds: the committed recompute's own noise):
  - the images of the manifest's golden seeds (contract/golden.py), in 8-bit levels;
  - training.evaluate's figures (classes, class KL, classifier score, unclear share, FD / floor), three draws
    of 4,000 latents, seeds 0-2, as `python -m training.evaluate` computes them.
Nothing is written: the committed model stays as it is.

Examples:
  python -m research.bn_batches                     # K = 1, 2, 4, 8, 16, and 16 from two other latent seeds
  python -m research.bn_batches --batches 1,2 --draws 0   # the golden images only (a minute)
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save

from common.cli import OneLineErrorParser, UserError, cli_main
from contract.artifact import ArtifactError, verify
from contract.golden import CASES, golden_images
from contract.pixels import to_nhwc_uint8
from training.ema import BN_BATCH_SIZE, recompute_batchnorm
from training.evaluate import DigitEvaluator, generate, mean_figures
from training.models import GeneratorConfig, build_generator

TORCHSCRIPT = "generator.torchscript.pt"


def committed_generator(artifact: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    """The artifact's generator config and state dict, proven to be its run's generator.safetensors."""
    try:
        manifest = verify(artifact)
    except ArtifactError as e:
        raise UserError(f"{artifact}: {e}") from None
    source = manifest["source"]
    state = {k: v.detach().contiguous() for k, v in torch.jit.load(str(artifact / TORCHSCRIPT)).state_dict().items()}
    digest = hashlib.sha256(st_save(state)).hexdigest()
    if digest != source["generator_sha256"]:
        raise UserError(f"{artifact / TORCHSCRIPT}: its weights are not the run's generator.safetensors (sha256 {digest[:12]}...)")
    return GeneratorConfig.from_dict(source["generator"]), state


def with_statistics(cfg: GeneratorConfig, state: dict, batches: int, seed: int = 1234) -> torch.nn.Module:
    g = build_generator(cfg)
    g.load_state_dict(state)
    return recompute_batchnorm(g, cfg.nz, torch.device("cpu"), seed=seed, batches=batches)


@torch.no_grad()
def golden(g: torch.nn.Module, nz: int) -> np.ndarray:
    return golden_images(lambda z: to_nhwc_uint8(g(torch.from_numpy(z)).numpy()), nz, CASES)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m research.bn_batches",
        description="Recompute the committed default model's BatchNorm statistics from fewer latent batches and "
        "print how its golden images and training.evaluate figures change.",
        epilog=__doc__.split("Examples:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--artifact", default="artifacts/default", help="model artifact folder (default: %(default)s)")
    p.add_argument("--batches", default="1,2,4,8,16", help=f"numbers of batches of {BN_BATCH_SIZE} latents to try (default: %(default)s)")
    p.add_argument(
        "--draws", type=int, default=3, help="draws of --samples latents for the quality figures; 0 = golden images only (default: 3)"
    )
    p.add_argument("--samples", type=int, default=4000, help="latents per draw (default: 4000)")
    p.add_argument(
        "--other-seeds",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[1235, 1236],
        help="rows for 16 batches from other latent seeds than the trainer's 1234: the noise of the committed recompute "
        "itself ('' = none; default: 1235,1236)",
    )
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = sorted({int(k) for k in args.batches.split(",")})
    except ValueError:
        raise UserError(f"--batches must be comma-separated integers, got {args.batches!r}") from None
    if counts[0] < 1:
        raise UserError("--batches must be >= 1")
    cfg, state = committed_generator(Path(args.artifact))
    reference = build_generator(cfg)
    reference.load_state_dict(state)
    reference.eval()
    full = with_statistics(cfg, state, 16)
    same = all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), reference.state_dict().values()))
    print(f"{args.artifact}: 16 batches of {BN_BATCH_SIZE} reproduce the committed statistics exactly: {same}")
    expected = golden(reference, cfg.nz).astype(np.int16)
    evaluator = DigitEvaluator() if args.draws else None
    floor = evaluator.floor(args.samples)["fd"] if evaluator else None
    print(
        f"{'batches of latents':>20} {'max levels':>10} {'px differing':>12} {'mean levels':>11}"
        + (f" {'classes':>7} {'class KL':>8} {'score':>6} {'unclear':>7} {'FD/floor':>8} {'range':>11}" if evaluator else "")
    )
    rows = [("committed", reference)] + [(f"{k} x {BN_BATCH_SIZE}", with_statistics(cfg, state, k)) for k in counts]
    # the committed recompute's own noise: as many latents, other ones
    rows += [(f"16 x {BN_BATCH_SIZE}, seed {seed}", with_statistics(cfg, state, 16, seed)) for seed in args.other_seeds]
    for label, g in rows:
        diff = np.abs(golden(g, cfg.nz).astype(np.int16) - expected)
        line = f"{label:>20} {diff.max():>10} {(diff > 0).mean():>12.2%} {diff.mean():>11.3f}"
        if evaluator:
            f = mean_figures(
                [evaluator.figures(generate(g, cfg.nz, args.samples, seed, torch.device("cpu"))) for seed in range(args.draws)]
            )
            ratios = [fd / floor for fd in f["fd_draws"]]
            line += (
                f" {f['classes']:>4}/10 {f['class_kl']:>8.4f} {f['score']:>6.3f} {f['unclear']:>7.1%}"
                f" {f['fd'] / floor:>7.2f}x {min(ratios):>5.2f}-{max(ratios):.2f}"
            )
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
