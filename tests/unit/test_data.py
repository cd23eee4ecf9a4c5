"""Each data format, from fixtures made here, and the bundled MNIST subset."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from common.cli import UserError
from training.data import load_dataset, to_unit_range
from training.run import main


def write_idx(path, images: np.ndarray, compress: bool) -> None:
    n, h, w = images.shape
    raw = struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_bundled_mnist_is_padded_to_32_and_scaled():
    ds = load_dataset("mnist", "auto", 32, 1)
    assert ds.images.shape == (5000, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.images[:, :, :2].max() == 0  # the 2-pixel pad is background
    x = to_unit_range(ds.images[:64])
    assert x.min() == -1 and x.max() == 1


@pytest.mark.parametrize("compress", [False, True])
def test_idx_file_and_folder(tmp_path, compress):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 28, 28))
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    write_idx(tmp_path / name, imgs, compress)
    for source in (tmp_path / name, tmp_path):
        ds = load_dataset(str(source), "auto", 32, 1)
        assert ds.images.shape == (10, 1, 32, 32)
        assert torch.equal(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(imgs.astype(np.uint8)))


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(1)
    for i in (1, 2):
        data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": data, b"labels": [0] * 6}))
    ds = load_dataset(str(tmp_path), "auto", 32, 3)
    assert ds.images.shape == (12, 3, 32, 32)
    assert torch.equal(ds.images[-1], torch.from_numpy(data[-1].reshape(3, 32, 32)))  # last of data_batch_2


def test_cifar10_refuses_a_pickle_that_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UserError, match="refusing to load"):
        load_dataset(str(tmp_path), "auto", 32, 3)


def test_image_folder_recursive_rgb_and_gray_resized(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (80, 40), (255, 0, 0)).save(tmp_path / "a" / "wide.png")
    Image.new("L", (33, 50), 128).save(tmp_path / "a" / "b" / "tall.jpg")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(tmp_path / "x.JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(str(tmp_path), "auto", 32, 3)
    assert ds.images.shape == (3, 3, 32, 32)
    # sorted paths: a/b/tall.jpg, a/wide.png, x.JPEG
    centers = ds.images[:, :, 16, 16].int()
    expected = torch.tensor([[128, 128, 128], [255, 0, 0], [0, 0, 255]])
    assert (centers - expected).abs().max() <= 2, centers  # JPEG is lossy by a level or two
    gray = load_dataset(str(tmp_path), "folder", 32, 1)
    assert gray.images.shape == (3, 1, 32, 32)


def test_training_runs_on_an_image_folder(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    run = tmp_path / "run"
    assert (
        main(["--data", str(tmp_path), "--steps", "2", "--batch-size", "4", "--ngf", "8", "--ndf", "8", "--quiet", "--out", str(run)]) == 0
    )
    assert (run / "generator.safetensors").is_file()
