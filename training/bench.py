"""`python -m training.bench`: training images/s of our loop vs the PyTorch DCGAN example's loop.

The reference is written the way pytorch/examples dcgan/main.py writes it: a DataLoader with
per-image transforms, D on real, D on fake, G step, BCELoss on a Sigmoid output, default
settings. Both loops train the same networks at the same batch, on the same data, in turns
(reference, ours, reference, ours, ...) so that load on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch import nn

from training.config import TrainConfig
from training.data import load_dataset, to_unit_range
from training.errors import OneLineErrorParser, cli_main
from training.loop import Trainer
from training.models import GENERATOR_ARCHS


class _PerImageDataset(torch.utils.data.Dataset):
    """Like torchvision's ToTensor + Normalize applied per image, as the example's transforms do."""

    def __init__(self, images_u8: torch.Tensor):
        self.images = images_u8

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return to_unit_range(self.images[i]), 0


def reference_steps(G: nn.Module, D: nn.Module, images: torch.Tensor, nz: int, batch_size: int):
    """Yields after each iteration of the pytorch/examples dcgan loop (its code shape, verbatim in spirit)."""
    netD = nn.Sequential(D, nn.Sigmoid())
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(_PerImageDataset(images), batch_size=batch_size, shuffle=True, drop_last=True)
    while True:
        for data in loader:
            # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
            netD.zero_grad()
            real = data[0]
            b = real.size(0)
            label = torch.full((b,), 1.0)
            output = netD(real).view(-1)
            errD_real = criterion(output, label)
            errD_real.backward()
            noise = torch.randn(b, nz)
            fake = G(noise)
            label.fill_(0.0)
            output = netD(fake.detach()).view(-1)
            errD_fake = criterion(output, label)
            errD_fake.backward()
            optimizerD.step()
            # (2) Update G network: maximize log(D(G(z)))
            G.zero_grad()
            label.fill_(1.0)
            output = netD(fake).view(-1)
            errG = criterion(output, label)
            errG.backward()
            optimizerG.step()
            yield


def ours_steps(trainer: Trainer):
    while True:
        trainer.train_step()
        yield


def time_steps(steps_iter, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        next(steps_iter)
    return (time.perf_counter() - t0) / n


@cli_main
def main(argv=None) -> int:
    p = OneLineErrorParser(prog="python -m training.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=64, help="image side (default 64, as the reference figure)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch", nargs="+", choices=GENERATOR_ARCHS, default=list(GENERATOR_ARCHS))
    p.add_argument("--steps", type=int, default=10, help="timed iterations per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    args = p.parse_args(argv)

    data = load_dataset("mnist", "auto", args.image_size, 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {args.image_size}x{args.image_size}, "
          f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} iterations (median)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            cfg = TrainConfig(arch=arch, image_size=args.image_size, batch_size=args.batch_size, steps=1, device="cpu")
            ours = Trainer(cfg, data, tmp)
            # the reference trains the same networks, freshly initialised the same way
            ref_t = Trainer(cfg, data, tmp)
            ref = reference_steps(ref_t.G, ref_t.D, data.images, cfg.nz, cfg.batch_size)
            mine = ours_steps(ours)
            for it in (ref, mine):
                time_steps(it, args.warmup)
            times = {"reference": [], "ours": []}
            for _ in range(args.rounds):
                times["reference"].append(time_steps(ref, args.steps))
                times["ours"].append(time_steps(mine, args.steps))
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            for loop in ("reference", "ours"):
                rows.append((arch, loop, med[loop], args.batch_size / med[loop], med["reference"] / med[loop]))
    print(f"| {'generator':<13} | {'loop':<9} | {'s/iter':>7} | {'images/s':>8} | {'vs ref':>6} |")
    print(f"|{'-' * 15}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
    for arch, loop, s, ips, ratio in rows:
        print(f"| {arch:<13} | {loop:<9} | {s:7.3f} | {ips:8.1f} | {ratio:5.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
