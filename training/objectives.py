"""GAN objectives. Each returns losses for one discriminator and one generator update.

The loop owns the optimizers; an objective only says how the losses are formed, so the same
code trains the DCGAN and the MLPs of the toy benchmark (research/toy.py). D is anything
callable on a batch that returns one score per sample, shape (B,).

  --loss nonsaturating           Goodfellow et al. 2014 (the article's)
  --loss nonsaturating --unroll K   Metz et al. 2016: G's loss through D advanced K Adam steps
  --loss wgan-gp                 Gulrajani et al. 2017: critic, gradient penalty, n_critic 5
  --loss nonsaturating --r1 G    Mescheder et al. 2018: D's loss + G/2 E||grad_x D(x)||^2 on real images

Every objective takes an `augment` callable (training/augment.py, DiffAugment) that it applies to
each batch of images before D sees it, real or generated, in the D and the G step alike (and in
unrolling's inner steps); the identity by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from common.cli import UserError

LOSSES = ("nonsaturating", "wgan-gp")

# Settings each loss brings as its defaults; run.py applies them only where the user set nothing.
LOSS_DEFAULTS = {
    # Gulrajani et al. 2017, Algorithm 1: Adam lr 1e-4, betas (0.0, 0.9); their DCGAN-style
    # experiments use beta1 0.5, which is what we found stable. The penalty is per sample, so the
    # critic may not use BatchNorm (it couples the samples of a batch): LayerNorm instead. No
    # dropout: a random critic is a different function at every evaluation, and the penalty then
    # constrains one function while the loss scores another; their critics have none.
    "wgan-gp": {"lr": 1e-4, "beta1": 0.5, "beta2": 0.9, "d_norm": "layernorm", "dropout": 0.0},
}

COMBINATIONS_HELP = (
    "allowed: --loss nonsaturating with --unroll K or --r1 GAMMA (not both); --loss wgan-gp with "
    "--d-norm layernorm or none, no --unroll and no --r1"
)


def check_combination(loss: str, unroll: int, d_norm: str | None = None, r1: float = 0.0) -> None:
    """Refuse the combinations we do not implement, with one line that says what is allowed.

    d_norm is None for networks that have no such setting (the toy MLPs).
    """
    if loss not in LOSSES:
        raise UserError(f"--loss {loss!r} is unknown; expected one of {LOSSES}")
    if unroll < 0:
        raise UserError(f"--unroll must be >= 0, got {unroll}")
    if not 0 <= r1 < float("inf"):  # also refuses NaN
        raise UserError(f"--r1 must be a finite number >= 0 (0 = off), got {r1}")
    if r1 and loss == "wgan-gp":
        raise UserError(f"--r1 is for the non-saturating loss; wgan-gp has its own gradient penalty ({COMBINATIONS_HELP})")
    if r1 and unroll:
        # the inner steps would differentiate a gradient of a gradient: a third-order graph per step
        raise UserError(f"--r1 is not implemented with --unroll ({COMBINATIONS_HELP})")
    if loss == "wgan-gp" and unroll:
        raise UserError(f"--unroll is not implemented for --loss wgan-gp ({COMBINATIONS_HELP})")
    if loss == "wgan-gp" and d_norm == "batchnorm":
        raise UserError(f"--loss wgan-gp needs a critic without BatchNorm: the gradient penalty is per sample ({COMBINATIONS_HELP})")


@dataclass
class DiscriminatorStats:
    loss: torch.Tensor
    d_x: torch.Tensor  # mean D(x): a probability (sigmoid of the logit), or the raw critic score for wgan-gp
    d_g_z: torch.Tensor  # mean D(G(z)) before the D update, same units
    grad_real: torch.Tensor | None = None  # with --r1: mean ||grad_x D(x)||^2 over the real batch (the penalty / (G/2))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class NonSaturating:
    """Goodfellow et al. 2014: D maximises log D(x) + log(1 - D(G(z))); G maximises log D(G(z)).

    D sees real and fake images in separate batches. The article concatenates them into one
    batch, but with BatchNorm in D that trains D on mixed-batch statistics while the generator
    step shows it fakes alone: tried here, D(x) went to 1.0 within 20 steps while the generator
    loss read 0.2 (D "fooled" by its own batch statistics). Separate batches keep the D and G
    steps consistent, as the PyTorch DCGAN example does.

    With `r1` > 0, D's loss adds Mescheder et al. 2018's R1 penalty, r1/2 E||grad_x D(x)||^2 on the real
    images D sees (after augmentation, as ADA does), with the gradient of the logit: it keeps D from growing
    steep around the real digits, which a D that memorises a small dataset does (without it, the
    bundled-digit run's ||grad||^2 rose from about 28 at step 4,500 to 280 at 15,000; README, "R1"). Taken from the loss's own forward
    (same dropout mask, one double backward), every D step.
    """

    d_steps = 1  # discriminator updates per generator update

    def __init__(self, augment=_identity, r1: float = 0.0):
        self.augment = augment
        self.r1 = r1

    def discriminator_loss(self, D, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorStats:
        real_in = self.augment(real)
        if self.r1:
            real_in = real_in.detach().requires_grad_(True)
        real_logits = D(real_in).float()  # (B,)
        fake_logits = D(self.augment(fake)).float()  # (B,)
        loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + F.binary_cross_entropy_with_logits(
            fake_logits, torch.zeros_like(fake_logits)
        )
        grad_real = None
        if self.r1:
            (grad,) = torch.autograd.grad(real_logits.sum(), real_in, create_graph=True)  # (B, C, H, W)
            grad_real = grad.float().flatten(1).pow(2).sum(1).mean()
            loss = loss + 0.5 * self.r1 * grad_real
            grad_real = grad_real.detach()
        return DiscriminatorStats(loss, real_logits.detach().sigmoid().mean(), fake_logits.detach().sigmoid().mean(), grad_real)

    def generator_loss(self, D, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        logits = D(self.augment(fake)).float()  # (B,)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


class WassersteinGP:
    """Gulrajani et al. 2017: the critic minimises E[D(G(z))] - E[D(x)] + lambda E[(||grad D(x_hat)|| - 1)^2].

    x_hat are random interpolates between real and fake samples; G minimises -E[D(G(z))]. The
    critic takes `d_steps` (n_critic) updates per generator update, each on a fresh batch. With
    augmentation the interpolates are taken between the augmented real and fake samples.
    """

    def __init__(self, gp_weight: float = 10.0, n_critic: int = 5, augment=_identity):
        self.gp_weight = gp_weight
        self.d_steps = n_critic
        self.augment = augment

    def gradient_penalty(self, D, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        # one mixing weight per sample, broadcast over the other dims: (B, 1, 1, 1) or (B, 1)
        eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device)
        x_hat = torch.lerp(real.float(), fake.float(), eps).requires_grad_(True)
        # float32 even under autocast: the penalty is a difference of gradient norms near 1
        with torch.autocast(real.device.type, enabled=False):
            (grad,) = torch.autograd.grad(D(x_hat).float().sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()

    def discriminator_loss(self, D, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorStats:
        real, fake = self.augment(real), self.augment(fake)
        real_scores = D(real).float()  # (B,)
        fake_scores = D(fake).float()  # (B,)
        loss = fake_scores.mean() - real_scores.mean() + self.gp_weight * self.gradient_penalty(D, real, fake)
        return DiscriminatorStats(loss, real_scores.detach().mean(), fake_scores.detach().mean())

    def generator_loss(self, D, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return -D(self.augment(fake)).float().mean()


class Unrolled:
    """Metz et al. 2016: the generator's loss is taken through D advanced `steps` optimizer steps.

    The K inner steps are D's own update (Adam, starting from D's current moment estimates) applied
    to a functional copy of D's weights, with the graph kept (create_graph), so G's gradient
    accounts for how D would react to G's samples. The real D is never modified here: it takes
    only its normal step in the loop. Inner steps reuse the step's real batch and G's samples, as
    in Metz et al.'s reference code. A naive unrolling (plain SGD on a detached copy) was tried
    here and stayed collapsed; the Adam step and the gradient through it are what matter.
    """

    def __init__(self, base, steps: int, d_optimizer: torch.optim.Optimizer):
        if not isinstance(d_optimizer, torch.optim.Adam):
            raise UserError("unrolling follows the discriminator's Adam update; its optimizer must be torch.optim.Adam")
        group = d_optimizer.param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or group["maximize"] or len(d_optimizer.param_groups) != 1:
            raise UserError("unrolling supports plain Adam for D (one param group, no weight decay/amsgrad/maximize)")
        self.base, self.steps, self.opt = base, steps, d_optimizer
        self.d_steps = base.d_steps

    def discriminator_loss(self, D, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorStats:
        return self.base.discriminator_loss(D, real, fake)

    def _adam_state(self, D: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """(exp_avg, exp_avg_sq, step) per parameter of D, zeros before D's first step; detached."""
        out = []
        for p in D.parameters():
            st = self.opt.state.get(p, {})
            if "exp_avg" in st:
                out.append((st["exp_avg"].detach(), st["exp_avg_sq"].detach(), float(st["step"])))
            else:
                out.append((torch.zeros_like(p), torch.zeros_like(p), 0.0))
        return out

    def unrolled_parameters(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor):
        """D's parameters after `steps` differentiable Adam steps on the base D loss, and a caller for them.

        Returns (params, call): params is a list in D.parameters() order, call(params) a function
        x -> scores that runs D with those parameters (and its own copy of D's buffers).
        """
        group = self.opt.param_groups[0]
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        names = [n for n, _ in D.named_parameters()]
        # BatchNorm running stats get updated by train-mode forwards: give the copy its own
        buffers = {n: b.clone() for n, b in D.named_buffers()}

        def call(weights):
            return lambda x: functional_call(D, {**dict(zip(names, weights)), **buffers}, (x,))

        params = [p.detach().requires_grad_(True) for p in D.parameters()]
        state = self._adam_state(D)
        for _ in range(self.steps):
            loss = self.base.discriminator_loss(call(params), real, fake).loss
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            new_params, new_state = [], []
            for p, g, (m, v, t) in zip(params, grads, state):
                g = torch.zeros_like(p) if g is None else g
                t += 1
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                # torch.optim.Adam's update; the 1e-30 keeps d sqrt(v)/dv finite where v is 0
                denom = (v / (1 - b2**t) + 1e-30).sqrt() + eps
                new_params.append(p - lr / (1 - b1**t) * m / denom)
                new_state.append((m, v, t))
            params, state = new_params, new_state
        return params, call

    def generator_loss(self, D: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        params, call = self.unrolled_parameters(D, real, fake)
        return self.base.generator_loss(call(params), fake, real)


def build_objective(loss: str, unroll: int = 0, d_optimizer: torch.optim.Optimizer | None = None, augment=_identity, r1: float = 0.0):
    """The objective for `--loss`, `--unroll` and `--r1`; unrolling needs D's optimizer (it replays its update).

    augment: applied to every image batch before D (training/augment.py); the identity by default.
    """
    check_combination(loss, unroll, r1=r1)
    base = WassersteinGP(augment=augment) if loss == "wgan-gp" else NonSaturating(augment=augment, r1=r1)
    if unroll:
        if d_optimizer is None:
            raise ValueError("unrolling needs the discriminator's optimizer")
        return Unrolled(base, unroll, d_optimizer)
    return base
