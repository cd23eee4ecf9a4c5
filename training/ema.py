"""Exponential moving average of the generator's weights, with BatchNorm statistics recomputed.

Averaged weights need their own BatchNorm statistics: the raw generator's running mean/var
describe activations of *other* weights, and copying them onto the averaged ones gives
garbage. `recompute_batchnorm` re-estimates them with forward passes of the averaged weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import update_bn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # warm-up: early on, follow the raw weights closely (decay ramps from 0.1 up to `decay`)
        d = min(self.decay, (1 + step) / (10 + step))
        # one fused in-place lerp over the parameter list (what swa_utils.get_ema_multi_avg_fn uses), not a
        # Python loop of per-tensor lerp_: the same results (docs/training.md, "The EMA update")
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)


BN_BATCH_SIZE = 128  # latents per batch of the recompute


class _LastBatchNormReached(Exception):
    pass


class _UpToLastBatchNorm(nn.Module):
    """`model`'s forward pass stopped after its last BatchNorm (the last registered: these generators register
    their layers in the order they run): what comes after changes no statistic, and in a DCGAN generator
    that is the largest convolution, at full resolution, about half of the pass."""

    def __init__(self, model: nn.Module, last: nn.Module):
        super().__init__()
        self.model, self.last = model, last

    def forward(self, z: torch.Tensor) -> None:
        def stop(module, args, output):
            raise _LastBatchNormReached

        hook = self.last.register_forward_hook(stop)
        try:
            self.model(z)
        except _LastBatchNormReached:
            pass
        finally:
            hook.remove()


def recompute_batchnorm(
    model: nn.Module, nz: int, device: torch.device, seed: int = 1234, batches: int = 16, batch_size: int = BN_BATCH_SIZE
) -> nn.Module:
    """Set every BatchNorm's running stats to their average over `batches` batches of N(0, 1) latents; eval mode.

    torch.optim.swa_utils.update_bn does the work (reset, cumulative average, one pass, momenta restored),
    on the pass up to the last BatchNorm; the latents come from their own generator, so the training RNG
    streams are untouched.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        g = torch.Generator(device="cpu").manual_seed(seed)
        update_bn((torch.randn(batch_size, nz, generator=g) for _ in range(batches)), _UpToLastBatchNorm(model, bns[-1]), device)
    return model.eval()
