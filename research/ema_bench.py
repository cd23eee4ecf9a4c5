"""`python -m research.ema_bench`: the EMA update as a per-tensor lerp_ loop vs one torch._foreach_lerp_.

Prints a table (microseconds per update of the generator's parameters, median of 3 rounds of 200) and whether
the two give bit-identical averages.
"""

from __future__ import annotations

import copy
import time

import torch

from training.models import GeneratorConfig, build_generator


def loop(ema, g, w):
    for a, b in zip(ema.parameters(), g.parameters()):
        a.lerp_(b.detach(), w)


def fused(ema, g, w):
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in g.parameters()], w)


@torch.no_grad()
def main() -> None:
    print("| generator | parameters (tensors) | per-tensor loop, us/update | _foreach_lerp_, us/update | ratio | identical |")
    print("|---|---|---|---|---|---|")
    for size in (32, 64):
        cfg = GeneratorConfig(arch="upsample", nz=100, image_size=size, channels=1 if size == 32 else 3, ngf=64)
        torch.manual_seed(0)
        g = build_generator(cfg)
        e1, e2 = copy.deepcopy(g), copy.deepcopy(g)
        for p in g.parameters():
            p.add_(torch.randn_like(p))
        loop(e1, g, 0.001)
        fused(e2, g, 0.001)
        same = all(torch.equal(a, b) for a, b in zip(e1.parameters(), e2.parameters()))
        times = {}
        for name, f, e in (("loop", loop, e1), ("fused", fused, e2)) * 3:
            t = time.perf_counter()
            for _ in range(200):
                f(e, g, 0.001)
            times.setdefault(name, []).append((time.perf_counter() - t) / 200 * 1e6)
        lo, fu = sorted(times["loop"])[1], sorted(times["fused"])[1]
        n, k = sum(p.numel() for p in g.parameters()), len(list(g.parameters()))
        print(f"| upsample {size}x{size}, ngf 64 | {n:,} ({k}) | {lo:,.0f} | {fu:,.0f} | {lo / fu:.2f}x | {same} |")


if __name__ == "__main__":
    main()
