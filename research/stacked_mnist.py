"""`python -m research.stacked_mnist`: Stacked MNIST, 1,000 modes (Metz et al. 2016, VEEGAN, PacGAN).

Each image stacks three random digits of the bundled 5,000 as its R, G and B channels, so a
generator can produce 10^3 = 1,000 digit triples (modes). Protocol of VEEGAN/PacGAN: draw 26,000
samples, classify each channel with the MNIST classifier, count the modes hit (at least one
sample) and KL(mode histogram || uniform over 1,000).

  build     writes the data set as a folder of PNGs that `python -m training.run --data DIR` reads
  evaluate  the figures of a run dir's generator, beside real stacked images (the floor)

Examples:
  python -m research.stacked_mnist build --out data/stacked-mnist --n 50000
  python -m training.run --data data/stacked-mnist --channels 3 --steps 20000 --out runs/stacked
  python -m research.stacked_mnist evaluate runs/stacked
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import atomic_write_json
from training import rundir
from training.classifier import DEFAULT_DIR, bundled_digits, load_classifier, predict, to_input
from training.evaluate import generate
from training.metrics import class_histogram, kl_to_uniform, modes_hit

MODES = 1000
SAMPLES = 26000  # the protocol's sample count

# Published (modes of 1,000, KL): VEEGAN table 2, PacGAN table 2
PUBLISHED = [
    ("DCGAN (VEEGAN t.2)", 99, 3.40),
    ("Unrolled GAN (VEEGAN t.2)", 48.7, 4.32),
    ("VEEGAN (VEEGAN t.2)", 150, 2.95),
    ("PacDCGAN2 (PacGAN t.2)", 1000, 0.06),
]


def build(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n stacked images (n, 3, 32, 32) uint8 and their digit triples (n, 3)."""
    images, labels = bundled_digits()  # (5000, 1, 32, 32)
    idx = torch.randint(len(images), (n, 3), generator=torch.Generator().manual_seed(seed))
    return images[idx].squeeze(2), labels[idx]  # (n, 3, 32, 32), (n, 3)


def figures(images: torch.Tensor, classifier) -> dict:
    """images (N, 3, H, W) in [-1, 1] -> modes hit of 1,000 and KL to uniform over the 1,000 modes."""
    if images.shape[1] != 3 or images.shape[-1] != 32:
        raise UserError(f"Stacked MNIST needs 3-channel 32x32 images, got {tuple(images.shape[1:])}")
    probs, _ = predict(classifier, images.reshape(-1, 1, 32, 32))  # each channel is one digit
    digits = probs.argmax(1).reshape(-1, 3)  # (N, 3)
    counts = class_histogram(digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2], MODES)
    return {"modes": modes_hit(counts), "kl": round(kl_to_uniform(counts), 4), "samples": len(images)}


def write_folder(out: Path, images: torch.Tensor, meta: dict) -> None:
    """PNGs plus stacked-mnist.json, written into a temporary folder renamed to `out` at the end."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    width = len(str(len(images) - 1))
    for i, im in enumerate(images.permute(0, 2, 3, 1).numpy()):  # (32, 32, 3) uint8
        Image.fromarray(np.ascontiguousarray(im)).save(tmp / f"{i:0{width}d}.png", format="PNG")
    atomic_write_json(tmp / "stacked-mnist.json", meta)
    os.replace(tmp, out)  # an empty `out` is replaced; a crash leaves only the hidden .tmp folder


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m research.stacked_mnist",
        description="Stacked MNIST (1,000 modes): build the data set from the bundled digits, or evaluate a "
        "generator trained on it (modes hit of 1,000 and KL to uniform over 26,000 samples).",
        epilog=__doc__.split("Examples:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write N stacked images as PNGs into a folder")
    b.add_argument("--out", required=True, metavar="DIR", help="folder to create (must be empty or new)")
    b.add_argument("--n", type=int, default=50000, help="images to write (default: 50000)")
    b.add_argument("--seed", type=int, default=0, help="seed of the digit draws (default: 0)")
    e = sub.add_parser("evaluate", help="modes and KL of a run dir's generator, beside real stacked images")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run dir trained on Stacked MNIST (3 channels, 32x32)")
    e.add_argument("--samples", type=int, default=SAMPLES, help=f"samples to draw (default: {SAMPLES}, the protocol)")
    e.add_argument("--seed", type=int, default=0, help="seed of the latents (default: 0)")
    e.add_argument("--classifier", default=str(DEFAULT_DIR), metavar="DIR", help="classifier folder (default: %(default)s)")
    e.add_argument("--json", metavar="FILE", help="where to write the figures (default: RUN_DIR/stacked-mnist.json)")
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m research.stacked_mnist " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.command == "build":
        out = Path(args.out)
        if args.n <= 0:
            raise UserError(f"--n must be > 0, got {args.n}")
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} is not empty; pick a new --out")
        images, labels = build(args.n, args.seed)
        write_folder(
            out,
            images,
            {
                "images": args.n,
                "seed": args.seed,
                "command": command,
                "modes_present": modes_hit(class_histogram(labels[:, 0] * 100 + labels[:, 1] * 10 + labels[:, 2], MODES)),
            },
        )
        print(f"wrote {args.n} images to {out}; train with: python -m training.run --data {out} --channels 3")
        return 0

    run_dir = Path(args.run_dir)
    if args.samples <= 0:
        raise UserError(f"--samples must be > 0, got {args.samples}")
    classifier, _ = load_classifier(args.classifier)
    g_cfg, G, meta = rundir.load_generator(run_dir)
    rows = {"real stacked digits (floor)": figures(to_input(build(args.samples, seed=1)[0]), classifier)}
    rows[f"generator (step {meta.get('step')})"] = figures(generate(G, g_cfg.nz, args.samples, args.seed, torch.device("cpu")), classifier)
    print(f"{run_dir}: {args.samples} samples each")
    print(f"{'':<30} {'modes (of 1000)':>15} {'KL':>8}")
    for name, f in rows.items():
        print(f"{name:<30} {f['modes']:>15} {f['kl']:>8.3f}")
    for name, modes, kl in PUBLISHED:
        print(f"{name:<30} {modes:>15} {kl:>8.2f}")
    out = Path(args.json) if args.json else run_dir / "stacked-mnist.json"
    atomic_write_json(out, {"run_dir": str(run_dir), "samples": args.samples, "seed": args.seed, "figures": rows, "command": command})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
