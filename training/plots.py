"""Sample grids and the loss curve, written as PNGs into the run dir."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.files import atomic_write_bytes


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, the same rounding the service uses."""
    x = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid_png(images: torch.Tensor, pad: int = 2) -> bytes:
    """A near-square grid of (B, C, H, W) images in [-1, 1], as PNG bytes."""
    px = to_uint8(images)
    b, h, w, c = px.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    canvas = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = px[i]
    buf = io.BytesIO()
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(buf, format="PNG")
    return buf.getvalue()


def save_grid(path: Path, images: torch.Tensor) -> None:
    atomic_write_bytes(path, grid_png(images))


def save_loss_curve(metrics_path: Path, out_path: Path) -> None:
    """Plot loss_d and loss_g (and D(x), D(G(z))) against step from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss_d" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(steps, [r["loss_d"] for r in rows], label="loss D")
    ax1.plot(steps, [r["loss_g"] for r in rows], label="loss G")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(steps, [r["d_x"] for r in rows], label="D(x)")
    ax2.plot(steps, [r["d_g_z"] for r in rows], label="D(G(z))")
    ax2.set_xlabel("generator step")
    ax2.set_ylabel("probability")
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out_path, buf.getvalue())
