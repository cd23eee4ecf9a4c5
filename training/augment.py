"""Differentiable augmentation of the discriminator's inputs (Zhao et al. 2020, "DiffAugment").

With few training images the discriminator memorises them: on the 5,000 bundled digits the
default run's logged D loss fell from 1.17 (mean over steps 1,001-2,000) to 0.16 (14,001-15,000;
D(x) 0.94, D(G(z)) 0.07), the sign Karras et al. 2020 (ADA) read as overfitting. DiffAugment
applies the same random transformations to real and generated images every time D sees them, in
the D step and in the G step; they are differentiable, so G's gradient flows through them, and G is
never taught to produce augmented images (D sees every batch through them, real and generated alike).

  --augment color,translation,cutout     the paper's policy for limited data
  --augment translation,cutout           its policy without the color transforms

color: brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) about the channel mean; nothing for one
channel) and contrast (x U(0.5, 1.5) about the image mean); translation: a shift of up to 1/8 of
the side in each direction, uncovered pixels 0; cutout: a zeroed square of half the side at a
random place. As in the paper, images are in [-1, 1] and the fill value is 0. Random numbers come
from torch's global RNG (seeded by the trainer and saved in checkpoints), one draw per image.
The strength is fixed (no ADA-style adaptation): on the article's DCGAN the full policy held D at
chance (D loss 2 ln 2), see the README's "DiffAugment against a memorising discriminator".
"""

from __future__ import annotations

import torch

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)


def saturation(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean


def contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Shift each image by (dy, dx), |dy|, |dx| <= ratio * side, filling with 0."""
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (b, 1, 1), device=x.device)
    # output pixel (i, j) reads input (i - dy, j - dx); index 0 and side+1 of the padded image are the fill
    rows = (torch.arange(h, device=x.device).view(1, h, 1) - dy + 1).clamp(0, h + 1)  # (B, H, 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) - dx + 1).clamp(0, w + 1)  # (B, 1, W)
    padded = torch.nn.functional.pad(x, [1, 1, 1, 1])  # (B, C, H+2, W+2)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # advanced indexing on dims 0, 2, 3 -> (B, H, W, C); back to (B, C, H, W)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero a square of side ratio * side (clipped at the border) centred anywhere in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - ch // 2, cx - cw // 2  # the square's corner, possibly outside the image
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


POLICIES = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(text: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> (). Raises ValueError naming what is allowed."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(
            f"unknown augmentation {', '.join(map(repr, unknown))}; use a comma-separated list of "
            f"{', '.join(POLICIES)} (e.g. color,translation,cutout), or '' for none"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"augmentation {text!r} names one transform twice")
    return names


class DiffAugment:
    """x (B, C, H, W) -> the same batch, each image transformed independently; identity for no policy."""

    def __init__(self, policy: str = ""):
        self.transforms = [t for n in parse_policy(policy) for t in POLICIES[n]]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.transforms:
            return x
        for t in self.transforms:
            x = t(x)
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x.contiguous()
