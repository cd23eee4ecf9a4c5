"""`python -m research.train_bench`: training images/s of our loop vs the PyTorch DCGAN example's loop.

The reference is written the way pytorch/examples dcgan/main.py writes it: a DataLoader with
per-image transforms, D on real, D on fake, G step, BCELoss on a Sigmoid output, default
settings (float32, eager, contiguous). Both loops train the same networks at the same batch, on
the same data, in turns (reference, ours, reference, ours, ...) so that load on a shared machine
hits both alike.

With --device cuda our loop runs twice: float32 (--no-amp) and bfloat16 autocast (the trainer's
default), both channels_last (the trainer's layout on CUDA); --compile adds a row with G and D
under torch.compile for the discriminator step's calls, to see whether compiling would pay.
"""

from __future__ import annotations

import tempfile
import time

import torch
from torch import nn

from common.cli import OneLineErrorParser, UserError, cli_main
from training.config import TrainConfig
from training.data import load_dataset, to_unit_range
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


def reference_steps(G: nn.Module, D: nn.Module, images: torch.Tensor, nz: int, batch_size: int, device: torch.device = torch.device("cpu")):
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
            real = data[0].to(device)
            b = real.size(0)
            label = torch.full((b,), 1.0, device=device)
            output = netD(real).view(-1)
            errD_real = criterion(output, label)
            errD_real.backward()
            noise = torch.randn(b, nz, device=device)
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


def time_steps(steps_iter, n: int, cuda: bool = False) -> float:
    """Seconds per iteration; on CUDA the queue is drained before both clock reads (kernels run async)."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        next(steps_iter)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


@cli_main
def main(argv=None) -> int:
    p = OneLineErrorParser(prog="python -m research.train_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=64, help="image side (default 64, as the reference figure)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch", nargs="+", choices=GENERATOR_ARCHS, default=list(GENERATOR_ARCHS))
    p.add_argument("--steps", type=int, default=10, help="timed iterations per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: our loop in float32 and in bfloat16 autocast, beside the reference (default cpu)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="with --device cuda: also our bfloat16 loop with G and D under torch.compile (compiles during "
        "the warm-up iterations, a minute or more)",
    )
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if args.compile and not cuda:
        raise UserError("--compile needs --device cuda")
    # our loop's variants: (TrainConfig changes, compile G and D)
    loops = {"ours": ({}, False)}
    if cuda:
        loops = {"ours fp32": ({"amp": False}, False), "ours bf16": ({"amp": True}, False)}
        if args.compile:
            loops["ours bf16+compile"] = ({"amp": True}, True)

    data = load_dataset("mnist", "auto", args.image_size, 1)
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {where}, image {args.image_size}x{args.image_size}, "
        f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} iterations (median)"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            base = dict(arch=arch, image_size=args.image_size, batch_size=args.batch_size, steps=1, device=args.device)
            # the reference trains the same networks, freshly initialised the same way, in PyTorch's default layout
            ref_t = Trainer(TrainConfig(**base), data, tmp)
            ref_t.G.to(memory_format=torch.contiguous_format)
            ref_t.D.to(memory_format=torch.contiguous_format)
            iters = {"reference": reference_steps(ref_t.G, ref_t.D, data.images, ref_t.cfg.nz, args.batch_size, ref_t.device)}
            for name, (changes, compiled) in loops.items():
                trainer = Trainer(TrainConfig(**base, **changes), data, tmp)
                if compiled:
                    trainer.G_train, trainer.D_train = torch.compile(trainer.G), torch.compile(trainer.D)
                iters[name] = ours_steps(trainer)
            for it in iters.values():
                time_steps(it, args.warmup, cuda)
            times = {name: [] for name in iters}
            for _ in range(args.rounds):
                for name, it in iters.items():
                    times[name].append(time_steps(it, args.steps, cuda))
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            for loop in iters:
                rows.append((arch, loop, med[loop], args.batch_size / med[loop], med["reference"] / med[loop]))
    print(f"| {'generator':<13} | {'loop':<17} | {'s/iter':>7} | {'images/s':>8} | {'vs ref':>6} |")
    print(f"|{'-' * 15}|{'-' * 19}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
    for arch, loop, s, ips, ratio in rows:
        print(f"| {arch:<13} | {loop:<17} | {s:7.4f} | {ips:8.1f} | {ratio:5.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
