"""uint8 image batches -> the bytes the API returns: one PNG per image, or one PNG grid."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

GRID_PADDING = 2  # pixels of black between grid cells, as torchvision.utils.make_grid draws them


def _pil(image: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 -> PIL image: C=1 is grayscale ("L"), C=3 is RGB."""
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    _pil(image).save(buf, format="PNG")
    return buf.getvalue()


def grid(images: np.ndarray) -> np.ndarray:
    """(B, H, W, C) uint8 -> one (rows*(H+p)+p, cols*(W+p)+p, C) image, ceil(sqrt(B)) columns, row-major."""
    b, h, w, c = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    p = GRID_PADDING
    canvas = np.zeros((rows * (h + p) + p, cols * (w + p) + p, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        y, x = p + r * (h + p), p + q * (w + p)
        canvas[y : y + h, x : x + w] = image
    return canvas
