"""The generator's output in [-1, 1] as 8-bit pixels: the one conversion every stage uses."""

from __future__ import annotations

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Model output in [-1, 1] -> 8-bit pixels: round((x + 1) * 127.5), clipped to [0, 255]; NaN (a network overflowed)
    is 0 on every platform, where a cast of NaN is undefined (fmax and fmin drop NaN, where clip keeps it)."""
    return np.fmin(np.fmax(np.rint((images.astype(np.float64) + 1.0) * 127.5), 0), 255).astype(np.uint8)


def to_nhwc_uint8(images: np.ndarray) -> np.ndarray:
    """(B, C, H, W) model output in [-1, 1] -> (B, H, W, C) contiguous 8-bit pixels, as the API serves them."""
    return np.ascontiguousarray(to_uint8(images).transpose(0, 2, 3, 1))
