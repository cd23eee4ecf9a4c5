"""The GAN objectives on tiny networks: finite losses, gradients where they belong, unrolling that
replays D's own Adam update without touching D."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers import assert_one_line_error
from torch import nn

from common.cli import UserError
from research.toy import Critic, mlp
from training.models import Discriminator, DiscriminatorConfig, GeneratorConfig, build_generator, init_weights
from training.objectives import NonSaturating, Unrolled, WassersteinGP, build_objective, check_combination


def toy_pair(seed: int = 0):
    torch.manual_seed(seed)
    return mlp(4, 16, 2), Critic(16)


def dcgan_pair(norm: str):
    torch.manual_seed(0)
    g = build_generator(GeneratorConfig(nz=8, image_size=8, ngf=4))
    d = Discriminator(DiscriminatorConfig(image_size=8, ndf=4, dropout=0.0, norm=norm))
    init_weights(g)
    init_weights(d)
    return g, d


def grads_of(module: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("objective", [NonSaturating(), WassersteinGP()], ids=["nonsaturating", "wgan-gp"])
@pytest.mark.parametrize("pair", ["toy", "dcgan"])
def test_losses_are_finite_and_reach_the_right_network(objective, pair):
    if pair == "toy":
        G, D = toy_pair()
        z, real = torch.randn(32, 4), torch.randn(32, 2)
    else:
        G, D = dcgan_pair("layernorm" if isinstance(objective, WassersteinGP) else "batchnorm")
        z, real = torch.randn(6, 8), torch.rand(6, 1, 8, 8) * 2 - 1
    fake = G(z)
    d = objective.discriminator_loss(D, real, fake.detach())
    d.loss.backward()
    assert torch.isfinite(d.loss) and torch.isfinite(d.d_x) and torch.isfinite(d.d_g_z)
    assert all(g is not None for g in grads_of(D))
    assert grads_of(D)[-2].abs().sum() > 0  # the last layer's weight (WGAN's bias gradient is exactly 0)
    assert all(g is None for g in grads_of(G)), "the D loss must not reach G (fake is detached)"

    D.zero_grad(set_to_none=True)
    D.requires_grad_(False)
    loss_g = objective.generator_loss(D, fake, real)
    loss_g.backward()
    assert torch.isfinite(loss_g)
    assert all(g is not None and torch.isfinite(g).all() for g in grads_of(G))
    assert any(g.abs().sum() > 0 for g in grads_of(G))
    assert all(g is None for g in grads_of(D))


def test_gradient_penalty_known_answers():
    # a linear critic D(x) = w . x has gradient w everywhere: penalty (||w|| - 1)^2
    critic = nn.Linear(2, 1, bias=False)
    real, fake = torch.randn(64, 2), torch.randn(64, 2)
    wgan = WassersteinGP()
    for w, expected in [((0.6, 0.8), 0.0), ((1.2, 1.6), 1.0), ((0.0, 0.0), 1.0)]:
        with torch.no_grad():
            critic.weight.copy_(torch.tensor([w]))
        gp = wgan.gradient_penalty(lambda x: critic(x).squeeze(1), real, fake)
        assert gp.item() == pytest.approx(expected, abs=1e-6)
    assert wgan.d_steps == 5 and wgan.gp_weight == 10.0


def test_r1_penalty_known_answers():
    # a linear D(x) = w . x + b has gradient w at every x: D's loss grows by r1/2 ||w||^2 exactly
    D = nn.Linear(3, 1)
    with torch.no_grad():
        D.weight.copy_(torch.tensor([[1.0, -2.0, 2.0]]))  # ||w||^2 = 9
    d = lambda x: D(x).squeeze(1)  # noqa: E731
    real, fake = torch.randn(16, 3), torch.randn(16, 3)
    plain = NonSaturating().discriminator_loss(d, real, fake)
    penalised = NonSaturating(r1=0.5).discriminator_loss(d, real, fake)
    assert plain.grad_real is None
    assert penalised.grad_real.item() == pytest.approx(9.0)
    assert (penalised.loss - plain.loss).item() == pytest.approx(0.25 * 9.0, rel=1e-5)
    # the penalty's gradient reaches D's weights: d/dw of r1/2 ||w||^2 is r1 w
    D.zero_grad()
    plain.loss.backward()
    g_plain = D.weight.grad.clone()
    D.zero_grad()
    penalised.loss.backward()
    assert torch.allclose(D.weight.grad - g_plain, 0.5 * D.weight.detach(), atol=1e-5)


def test_r1_on_the_dcgan_discriminator_flattens_it_at_the_real_images():
    # a few D steps with a strong penalty (the gradients of this tiny D are small: ||grad||^2 ~ 5e-4)
    # leave D's gradient at the real batch smaller than without
    G, D0 = dcgan_pair("batchnorm")
    z, real = torch.randn(8, 8), torch.rand(8, 1, 8, 8) * 2 - 1
    norms = {}
    for r1 in (0.0, 1000.0):
        D = copy.deepcopy(D0)
        opt = torch.optim.Adam(D.parameters(), lr=1e-3)
        for _ in range(20):
            step_d_once(G, D, opt, NonSaturating(r1=r1), z, real)
        norms[r1] = NonSaturating(r1=1.0).discriminator_loss(D, real, G(z).detach()).grad_real.item()
    assert math.isfinite(norms[0.0]) and norms[1000.0] < 0.5 * norms[0.0]


def step_d_once(G, D, opt_d, objective, z, real):
    d = objective.discriminator_loss(D, real, G(z).detach())
    opt_d.zero_grad(set_to_none=True)
    d.loss.backward()
    opt_d.step()


@pytest.mark.parametrize("pair", ["toy", "dcgan"])
def test_unrolling_replays_d_adam_update_and_leaves_d_untouched(pair):
    if pair == "toy":
        G, D = toy_pair()
        z, real = torch.randn(32, 4), torch.randn(32, 2)
    else:
        G, D = dcgan_pair("batchnorm")
        z, real = torch.randn(6, 8), torch.rand(6, 1, 8, 8) * 2 - 1
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-2, betas=(0.5, 0.999))
    base = NonSaturating()
    step_d_once(G, D, opt_d, base, z, real)  # D's Adam now has moments: unrolling must start from them
    unrolled = Unrolled(base, 3, opt_d)
    before = copy.deepcopy(D.state_dict())
    opt_before = copy.deepcopy(opt_d.state_dict())

    # the reference: 3 real Adam steps of a copy of D (same state) on the same batch
    D_copy = copy.deepcopy(D)
    opt_copy = torch.optim.Adam(D_copy.parameters(), lr=1e-2, betas=(0.5, 0.999))
    opt_copy.load_state_dict(copy.deepcopy(opt_d.state_dict()))  # load_state_dict shares tensors
    fake = G(z)
    for _ in range(3):
        d = base.discriminator_loss(D_copy, real, fake.detach())
        opt_copy.zero_grad(set_to_none=True)
        d.loss.backward()
        opt_copy.step()

    params, call = unrolled.unrolled_parameters(D, real, fake)
    for mine, ref in zip(params, D_copy.parameters()):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6)

    D.zero_grad(set_to_none=True)
    D.requires_grad_(False)
    loss_g = unrolled.generator_loss(D, fake, real)
    loss_g.backward()
    assert torch.isfinite(loss_g)
    assert all(g is not None and torch.isfinite(g).all() for g in grads_of(G))
    after = D.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), f"unrolling changed D's {k}"
    assert all(g is None for g in grads_of(D))
    assert str(opt_d.state_dict()) == str(opt_before), "unrolling changed D's optimizer state"


def test_generator_gradient_flows_through_the_unrolled_steps():
    """The unrolled gradient differs from the gradient at the unrolled weights held fixed: the
    second-order path (how D's update depends on G's samples) is there, as Metz et al. require."""
    G, D = toy_pair(1)
    z, real = torch.randn(64, 4), torch.randn(64, 2)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-2)
    unrolled = Unrolled(NonSaturating(), 2, opt_d)

    fake = G(z)
    unrolled.generator_loss(D, fake, real).backward()
    through = [p.grad.clone() for p in G.parameters()]

    G.zero_grad(set_to_none=True)
    fake = G(z)
    params, call = unrolled.unrolled_parameters(D, real, fake)
    NonSaturating().generator_loss(call([p.detach() for p in params]), fake, real).backward()
    held_fixed = [p.grad for p in G.parameters()]
    assert any(not torch.allclose(a, b, atol=1e-7) for a, b in zip(through, held_fixed))


def test_combinations():
    assert isinstance(build_objective("nonsaturating"), NonSaturating)
    assert isinstance(build_objective("wgan-gp"), WassersteinGP)
    D = Critic(4)
    assert isinstance(build_objective("nonsaturating", 5, torch.optim.Adam(D.parameters())), Unrolled)
    with pytest.raises(UserError, match="not implemented for --loss wgan-gp"):
        build_objective("wgan-gp", 5, torch.optim.Adam(D.parameters()))
    with pytest.raises(UserError, match="without BatchNorm"):
        check_combination("wgan-gp", 0, "batchnorm")
    with pytest.raises(UserError, match="unknown"):
        check_combination("hinge", 0, "batchnorm")
    with pytest.raises(UserError, match="plain Adam"):
        Unrolled(NonSaturating(), 5, torch.optim.Adam(D.parameters(), weight_decay=1e-4))
    check_combination("wgan-gp", 0, "layernorm")
    check_combination("nonsaturating", 10, "batchnorm")
    check_combination("nonsaturating", 0, "batchnorm", r1=1.0)
    assert build_objective("nonsaturating", r1=2.0).r1 == 2.0


# --- the trainer's flags --------------------------------------------------------------------------
TINY = ["--ngf", "8", "--ndf", "8", "--batch-size", "8", "--quiet", "--log-every", "1", "--eval-every", "0"]


def test_wgan_gp_run_takes_its_defaults_unless_set(tmp_path):
    from training.run import main

    assert main([*TINY, "--loss", "wgan-gp", "--steps", "2", "--out", str(tmp_path / "a")]) == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (cfg["lr"], cfg["beta1"], cfg["beta2"], cfg["d_norm"], cfg["dropout"]) == (1e-4, 0.5, 0.9, "layernorm", 0.0)
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) for r in rows)

    assert main([*TINY, "--loss", "wgan-gp", "--steps", "1", "--lr", "3e-4", "--d-norm", "none", "--out", str(tmp_path / "b")]) == 0
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (cfg["lr"], cfg["beta2"], cfg["d_norm"]) == (3e-4, 0.9, "none")  # explicit flags win


def test_r1_dcgan_run_logs_the_gradient_norm(tmp_path):
    from training.run import main

    assert main([*TINY, "--r1", "1", "--steps", "2", "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["r1"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_real"] > 0 and math.isfinite(r["loss_d"]) for r in rows)


def test_unrolled_dcgan_run(tmp_path):
    from training.run import main

    assert main([*TINY, "--unroll", "2", "--steps", "2", "--out", str(tmp_path / "u")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "u" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss_g"]) for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss", "wgan-gp", "--unroll", "3"], "--unroll is not implemented for --loss wgan-gp"),
        (["--loss", "wgan-gp", "--d-norm", "batchnorm"], "needs a critic without BatchNorm"),
        (["--unroll", "-1"], "--unroll must be >= 0"),
        (["--r1", "-1"], "--r1 must be a finite number >= 0"),
        (["--r1", "nan"], "--r1 must be a finite number >= 0"),
        (["--r1", "inf"], "--r1 must be a finite number >= 0"),
        (["--loss", "wgan-gp", "--r1", "1"], "wgan-gp has its own gradient penalty"),
        (["--unroll", "2", "--r1", "1"], "--r1 is not implemented with --unroll"),
        (["--loss", "hinge"], "invalid choice"),
    ],
)
def test_unsupported_combinations_get_one_line(tmp_path, capsys, args, message):
    from training.run import main

    with pytest.raises(SystemExit) as e:
        main([*TINY, "--steps", "1", "--out", str(tmp_path / "x"), *args])
    assert_one_line_error((e.value.code, capsys.readouterr().err), message)
    assert not (tmp_path / "x" / "config.json").exists()
