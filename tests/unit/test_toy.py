"""The 2D toy benchmark: mode figures on constructed points, and a short seeded run where a remedy
covers more of the ring than the plain loss."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from helpers import assert_one_line_error

from research.toy import METHODS, NETS, Critic, Maxout, ToyConfig, main, mixture, mlp, sample_mixture, train_toy
from training.metrics import mixture_figures
from training.models import init_weights

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The toy CLI sets torch's thread count for its process; calling it in-process must not leak that."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_mixture_figures_known_answers():
    centers, std = mixture("ring")
    assert centers.shape == (8, 2) and torch.allclose(centers.norm(dim=1), torch.full((8,), 2.0))
    on_three = centers[[0, 3, 5]].repeat(100, 1)  # 300 points exactly on 3 of the 8 modes, evenly
    f = mixture_figures(on_three, centers, std)
    assert f["modes"] == 3 and f["high_quality"] == 1.0
    assert f["reverse_kl"] == pytest.approx(math.log(8 / 3))
    # half of the points 5 std away from every mode: not high quality, not counted in the modes
    off = torch.cat([centers.repeat(10, 1), centers.repeat(10, 1) * (1 + 5 * std / 2)])
    f = mixture_figures(off, centers, std)
    assert f["modes"] == 8 and f["high_quality"] == 0.5 and f["reverse_kl"] == pytest.approx(0.0, abs=1e-12)
    nowhere = mixture_figures(torch.zeros(10, 2), centers, std)
    assert nowhere["modes"] == 0 and nowhere["high_quality"] == 0.0 and nowhere["reverse_kl"] == math.inf

    grid, grid_std = mixture("grid")
    assert grid.shape == (25, 2) and grid_std == 0.05
    assert set(grid[:, 0].tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}


@pytest.mark.parametrize("name", ["ring", "grid"])
def test_real_samples_are_the_ceiling(name):
    # in 2D, P(|x - mu| <= 3 std) = 1 - exp(-9/2) = 98.9%: the best any generator can score
    centers, std = mixture(name)
    f = mixture_figures(sample_mixture(centers, std, 20000, torch.Generator().manual_seed(0)), centers, std)
    assert f["modes"] == len(centers)
    assert f["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.005)
    assert f["reverse_kl"] < 0.005


def test_unrolling_covers_more_of_the_ring_than_the_plain_loss():
    """600 steps, seed 1, Metz et al.'s small nets: the plain loss sits on one mode, unrolling on six."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs it (tiny MLPs)
    try:
        short = replace(ToyConfig(), steps=600, seed=1, lr_decay=False, ema=0.0, g_hidden=128, g_layers=2)
        _, plain = train_toy(replace(short, **METHODS["gan"]))
        _, unrolled = train_toy(replace(short, **METHODS["unrolled"]))
    finally:
        torch.set_num_threads(threads)
    assert plain["modes"] <= 1
    assert unrolled["modes"] >= plain["modes"] + 3


def test_toy_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "toy.json"
    assert (
        main(
            [
                "--steps",
                "20",
                "--seeds",
                "0",
                "1",
                "--methods",
                "gan",
                "wgan-gp",
                "--g-hidden",
                "16",
                "--g-layers",
                "1",
                "--hidden",
                "16",
                "--batch-size",
                "32",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "ring: 8 modes" in text and "PacGAN4 (PacGAN t.1)" in text and "wgan-gp" in text
    report = json.loads(out.read_text())["ring"]
    assert len(report["runs"]) == 4 and set(report["summary"]) == {"gan", "wgan-gp"}
    assert {r["loss"] for r in report["runs"]} == {"nonsaturating", "wgan-gp"}


def test_maxout_takes_each_units_largest_piece():
    m = Maxout(1, 2, 3)  # unit 0: pieces x, 2x, 3x; unit 1: -x, -2x, -3x
    with torch.no_grad():
        m.linear.weight.copy_(torch.tensor([[1.0], [2.0], [3.0], [-1.0], [-2.0], [-3.0]]))
        m.linear.bias.zero_()
    assert torch.equal(m(torch.tensor([[1.0], [-1.0]])), torch.tensor([[3.0, -1.0], [-1.0, 3.0]]))


def test_pacgan_nets_from_the_cli(tmp_path, capsys):
    out = tmp_path / "toy.json"
    assert main(["--mixture", "grid", "--nets", "pacgan", "--methods", "gan", "--steps", "30", "--seeds", "0", "--json", str(out)]) == 0
    assert "gan, PacGAN nets" in capsys.readouterr().out
    run = json.loads(out.read_text())["grid"]["runs"][0]
    assert {k: run[k] for k in NETS["pacgan"]} == NETS["pacgan"] and run["nets"] == "pacgan"
    assert run["g_hidden"] == 400 and run["maxout"] == 5 and run["batch_size"] == 100
    # an explicit flag wins over the preset
    assert main(["--nets", "pacgan", "--methods", "gan", "--steps", "5", "--seeds", "0", "--batch-size", "32", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ring"]["runs"][0]["batch_size"] == 32


def test_packed_critic_scores_each_run_of_pack_points_as_one_input():
    torch.manual_seed(0)
    D = Critic(hidden=8, layers=2, pack=4)
    assert D.net[0].in_features == 8  # 4 points x 2 coordinates
    x = torch.randn(12, 2)
    scores = D(x)
    assert scores.shape == (3,)  # (B, 2) -> (B / pack,)
    # the second pack is points 4..7, concatenated in order
    assert torch.allclose(scores[1], D.net(x[4:8].reshape(1, 8)).squeeze())
    assert not torch.allclose(scores[1], D.net(x[4:8].flip(0).reshape(1, 8)).squeeze())  # order matters: a real concat


def test_pacgan_method_from_the_cli(tmp_path, capsys):
    out = tmp_path / "toy.json"
    assert (
        main(
            [
                "--mixture",
                "grid",
                "--nets",
                "pacgan",
                "--methods",
                "gan",
                "pacgan",
                "--pack",
                "2",
                "--steps",
                "20",
                "--seeds",
                "0",
                "--log-every",
                "10",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "pacgan pack 2, PacGAN nets" in text
    assert text.count("    step 20: D(x) 0.") == 2  # a log line per run, with D's mean outputs (probabilities)
    runs = json.loads(out.read_text())["grid"]["runs"]
    assert [(r["method"], r["pack"]) for r in runs] == [("gan", 1), ("pacgan", 2)]  # --pack is the pacgan method's only
    assert runs[1]["lr_g"] == NETS["pacgan"]["lr_g"] and all(math.isfinite(r["high_quality"]) for r in runs)
    # PacGAN's code's optimiser and init: --beta1 and --init reach every method's settings
    assert (
        main(
            [
                "--nets",
                "pacgan",
                "--methods",
                "gan",
                "pacgan",
                "--steps",
                "2",
                "--seeds",
                "0",
                "--beta1",
                "0.8",
                "--init",
                "normal",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    runs = json.loads(out.read_text())["ring"]["runs"]
    assert all(r["betas"] == [0.8, 0.999] and r["init"] == "normal" for r in runs)


def test_normal_init_is_pacgans():
    """--init normal reuses the DCGAN trainer's init: on the toy nets, every Linear (maxout's included)
    gets N(0, 0.02) weights and zero biases, as PacGAN's code; and train_toy applies it."""
    torch.manual_seed(0)
    G, D = mlp(2, 400, 2, 2, batchnorm=True), Critic(200, 3, maxout=5, pack=4)
    init_weights(G)
    init_weights(D)
    linears = [m for net in (G, D) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 + 4  # G: 2 hidden + out; D: 3 maxout linears + out
    assert all(not m.bias.detach().any() for m in linears)
    assert linears[1].weight.std().item() == pytest.approx(0.02, rel=0.02)  # 400 x 400 draws of N(0, 0.02)
    one_step = replace(ToyConfig(), steps=1, ema=0.0, g_hidden=16, g_layers=1, hidden=16, batch_size=8)
    first_std = lambda cfg: train_toy(cfg)[0][0].weight.std().item()  # noqa: E731 (G's 256 -> 16 layer, one step on)
    assert first_std(replace(one_step, init="normal")) == pytest.approx(0.02, rel=0.1)
    assert first_std(one_step) > 0.03  # PyTorch's default: U(-1/16, 1/16), std 0.036


def test_pacgan_draws_batch_size_packs_per_step(monkeypatch):
    """As PacGAN's code: --batch-size counts packs, so D's every input is a full pack of real or
    generated samples, and the generator's BatchNorm sees batch_size x pack samples."""
    seen = []
    original = Critic.forward
    monkeypatch.setattr(Critic, "forward", lambda self, x: (seen.append(tuple(x.shape)), original(self, x))[1])
    train_toy(replace(ToyConfig(), mixture="grid", steps=2, ema=0.0, pack=3, batch_size=10, g_batchnorm=True))
    assert seen and set(seen) == {(30, 2)}  # the spy records, the real forward runs


def test_averaged_batchnorm_generator_gets_its_own_statistics():
    """The EMA copy of a BatchNorm G never runs in train mode: its running statistics must be
    recomputed for the averaged weights, or it is evaluated with the initial mean 0 / var 1."""
    cfg = replace(ToyConfig(), mixture="grid", steps=40, ema=0.9, nets="pacgan", **NETS["pacgan"])
    G, figures = train_toy(cfg)
    bns = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 4 and not G.training
    assert all(bn.running_mean.abs().sum() > 0 and not torch.allclose(bn.running_var, torch.ones(400)) for bn in bns)
    assert 0 <= figures["high_quality"] <= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "must be > 0"),
        (["--ema", "1.5"], "--ema must be in [0, 1)"),
        (["--mixture", "spiral"], "invalid choice"),
        (["--pack", "0"], "must be > 0"),
        (["--beta1", "1.0"], "--beta1 must be in [0, 1)"),
    ],
)
def test_toy_cli_bad_input_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert_one_line_error((e.value.code, capsys.readouterr().err), message)
