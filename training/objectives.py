"""GAN objectives. Each returns losses for one discriminator and one generator update.

The loop owns the optimizers; an objective only says how the losses are formed, so the same
code trains the DCGAN and any other G/D pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import UserError

LOSSES = ("nonsaturating",)


@dataclass
class DiscriminatorStats:
    loss: torch.Tensor
    d_x: torch.Tensor  # mean D(x) as a probability (sigmoid of the logit)
    d_g_z: torch.Tensor  # mean D(G(z)) before the D update


class NonSaturating:
    """Goodfellow et al. 2014: D maximises log D(x) + log(1 - D(G(z))); G maximises log D(G(z)).

    D sees real and fake images in one batch, as the article's concatenation layer does:
    one forward pass instead of two.
    """

    d_steps = 1  # discriminator updates per generator update

    def discriminator_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorStats:
        b = real.shape[0]
        logits = D(torch.cat([real, fake])).float()  # (2B,)
        target = torch.cat([logits.new_ones(b), logits.new_zeros(fake.shape[0])])
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / b
        p = logits.detach().sigmoid()
        return DiscriminatorStats(loss, p[:b].mean(), p[b:].mean())

    def generator_loss(self, D: nn.Module, fake: torch.Tensor) -> torch.Tensor:
        logits = D(fake).float()  # (B,)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def build_objective(name: str):
    if name == "nonsaturating":
        return NonSaturating()
    raise UserError(f"--loss {name!r} is unknown; expected one of {LOSSES}")
