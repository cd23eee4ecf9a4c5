"""Exponential moving average of the generator's weights, with BatchNorm statistics recomputed.

Averaged weights need their own BatchNorm statistics: the raw generator's running mean/var
describe activations of *other* weights, and copying them onto the averaged ones gives
garbage. `recompute_batchnorm` re-estimates them with forward passes of the averaged weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # warm-up: early on, follow the raw weights closely (decay ramps from 0.1 up to `decay`)
        d = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - d)


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module, nz: int, device: torch.device, seed: int = 1234, batches: int = 16, batch_size: int = 128
) -> nn.Module:
    """Set every BatchNorm's running stats to their average over `batches` batches of N(0, 1) latents."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    saved_momentum = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: equal weight to every batch
    was_training = model.training
    model.train()
    g = torch.Generator(device="cpu").manual_seed(seed)  # own generator: training RNG streams untouched
    for _ in range(batches):
        model(torch.randn(batch_size, nz, generator=g).to(device))
    for bn, m in zip(bns, saved_momentum):
        bn.momentum = m
    model.train(was_training)
    return model.eval()
