"""DiffAugment (training/augment.py) on constructed images with known answers, and its place in the objectives."""

from __future__ import annotations

import pytest
import torch

from training.augment import DiffAugment, contrast, cutout, parse_policy, translation
from training.models import Discriminator, DiscriminatorConfig, GeneratorConfig, build_generator, init_weights
from training.objectives import build_objective


def dot_image(b: int, side: int = 8, at: tuple[int, int] = (4, 4)) -> torch.Tensor:
    """(b, 1, side, side) zeros with a single 1 at `at`."""
    x = torch.zeros(b, 1, side, side)
    x[:, 0, at[0], at[1]] = 1.0
    return x


def test_translation_moves_each_image_by_at_most_an_eighth_and_fills_with_zero():
    torch.manual_seed(0)
    x = dot_image(256, side=16, at=(8, 8))
    y = translation(x)
    assert y.shape == x.shape
    where = [torch.nonzero(img[0]).tolist() for img in y]
    assert all(len(w) == 1 for w in where), "a shift keeps the one dot (it cannot leave a 16-pixel image)"
    shifts = torch.tensor([[r - 8, c - 8] for [[r, c]] in where])
    assert shifts.abs().max() == 2  # 16 / 8
    assert len({tuple(s) for s in shifts.tolist()}) == 25, "every shift in [-2, 2]^2 occurs in 256 draws"
    # an image of ones comes back as a rectangle of ones, 14-16 rows by 14-16 columns, the rest 0 (the fill)
    shifted = translation(torch.ones(64, 1, 16, 16)).squeeze(1)
    assert set(shifted.unique().tolist()) == {0.0, 1.0}
    rows, cols = (shifted == 1).any(dim=2).sum(dim=1), (shifted == 1).any(dim=1).sum(dim=1)  # (B,), (B,)
    assert torch.equal(shifted.sum(dim=(1, 2)), (rows * cols).float())
    assert rows.min() == 14 and cols.min() == 14 and rows.max() == 16


def test_cutout_zeroes_one_square_of_half_the_side_clipped_at_the_border():
    torch.manual_seed(0)
    x = torch.ones(512, 1, 8, 8)
    y = cutout(x)
    zeros = (y == 0).squeeze(1)  # (B, 8, 8)
    for mask in zeros:
        rows, cols = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert mask.sum() == len(rows) * len(cols), "the zeros form one rectangle"
        assert rows.tolist() == list(range(rows[0], rows[0] + len(rows)))
    assert (zeros.sum(dim=(1, 2)) == 16).any() and (zeros.sum(dim=(1, 2)) < 16).any()  # whole squares and clipped ones


def test_contrast_scales_each_image_about_its_mean_by_one_factor_in_half_to_one_and_a_half():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    y = contrast(x)
    dx, dy = x - x.mean(dim=(1, 2, 3), keepdim=True), y - y.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)
    factor = (dx * dy).sum(dim=(1, 2, 3)) / (dx * dx).sum(dim=(1, 2, 3))  # (B,)
    assert torch.allclose(dy, factor.view(-1, 1, 1, 1) * dx, atol=1e-5), "one factor per image"
    assert factor.min() >= 0.5 and factor.max() <= 1.5 and factor.std() > 0.1


def test_policy_parsing_and_the_empty_policy_is_the_identity():
    assert parse_policy("color, translation,cutout") == ("color", "translation", "cutout")
    assert parse_policy("") == ()
    with pytest.raises(ValueError, match="unknown augmentation 'colour'"):
        parse_policy("colour")
    with pytest.raises(ValueError, match="twice"):
        parse_policy("cutout,cutout")
    x = torch.rand(4, 1, 8, 8)
    assert DiffAugment("")(x) is x and DiffAugment("").transforms == []


def test_augmentation_is_seeded_differentiable_and_reaches_both_d_inputs():
    aug = DiffAugment("color,translation,cutout")
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    torch.manual_seed(1)
    a = aug(x)
    torch.manual_seed(1)
    assert torch.equal(a, aug(x)), "same global seed, same transforms"
    assert not torch.equal(a, aug(x)), "a fresh draw per call"
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

    # in the objective: D sees augmented real and generated batches; G's gradient flows through them
    torch.manual_seed(0)
    G = build_generator(GeneratorConfig(nz=8, image_size=8, ngf=4))
    D = Discriminator(DiscriminatorConfig(image_size=8, ndf=4, dropout=0.0, norm="batchnorm"))
    init_weights(G)
    init_weights(D)
    seen = []
    D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    real = torch.full((6, 1, 8, 8), 0.5)
    objective = build_objective("nonsaturating", augment=DiffAugment("translation,cutout"))
    fake = G(torch.randn(6, 8))
    objective.discriminator_loss(D, real, fake.detach())
    assert not torch.equal(seen[0], real) and (seen[0] == 0).any(), "D saw the real batch augmented"
    D.requires_grad_(False)
    objective.generator_loss(D, fake, real).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())
    plain = build_objective("nonsaturating")
    seen.clear()
    plain.discriminator_loss(D, real, fake.detach())
    assert torch.equal(seen[0], real), "no --augment: D sees the batch as it is"
