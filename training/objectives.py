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

    D sees real and fake images in separate batches. The article concatenates them into one
    batch, but with BatchNorm in D that trains D on mixed-batch statistics while the generator
    step shows it fakes alone: tried here, D(x) went to 1.0 within 20 steps while the generator
    loss read 0.2 (D "fooled" by its own batch statistics). Separate batches keep the D and G
    steps consistent, as the PyTorch DCGAN example does.
    """

    d_steps = 1  # discriminator updates per generator update

    def discriminator_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorStats:
        real_logits = D(real).float()  # (B,)
        fake_logits = D(fake).float()  # (B,)
        loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        return DiscriminatorStats(loss, real_logits.detach().sigmoid().mean(), fake_logits.detach().sigmoid().mean())

    def generator_loss(self, D: nn.Module, fake: torch.Tensor) -> torch.Tensor:
        logits = D(fake).float()  # (B,)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def build_objective(name: str):
    if name == "nonsaturating":
        return NonSaturating()
    raise UserError(f"--loss {name!r} is unknown; expected one of {LOSSES}")
