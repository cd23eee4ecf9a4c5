"""Evaluation figures: known answers on constructed inputs, the committed classifier on real digits,
and the `python -m training.evaluate` CLI on a real run dir."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error
from PIL import Image

from training import rundir
from training.classifier import load_classifier, predict, to_input
from training.evaluate import DigitEvaluator, main, mean_figures
from training.metrics import (
    class_histogram,
    classes_covered,
    classifier_score,
    confused_pairs,
    feature_statistics,
    frechet_distance,
    kl_to_uniform,
    modes_hit,
    unclear_mask,
    unclear_share,
)
from training.models import GeneratorConfig, build_generator, init_weights

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run


def test_class_histogram_figures_known_answers():
    uniform = class_histogram(torch.arange(10).repeat(7), 10)
    assert uniform.tolist() == [7] * 10
    assert kl_to_uniform(uniform) == pytest.approx(0.0, abs=1e-12)
    assert classes_covered(uniform) == 10
    one_class = class_histogram(torch.full((50,), 3), 10)
    assert kl_to_uniform(one_class) == pytest.approx(math.log(10))
    assert classes_covered(one_class) == 1 and modes_hit(one_class) == 1
    # two classes evenly: KL = log(10/2)
    assert kl_to_uniform(torch.tensor([5, 5, 0, 0, 0, 0, 0, 0, 0, 0])) == pytest.approx(math.log(5))
    # 4% of samples in a class is under half the uniform share (5%): not covered; one sample is a "hit"
    counts = torch.tensor([96] * 9 + [4 * 9])  # last class: 36 of 900 = 4%
    assert classes_covered(counts) == 9
    assert modes_hit(torch.tensor([0, 1, 0, 7])) == 2


def test_classifier_score_known_answers():
    confident_spread = torch.eye(10).repeat(3, 1)  # one-hot, every class equally often
    assert classifier_score(confident_spread) == pytest.approx(10.0, rel=1e-6)
    one_class = torch.eye(10)[[4] * 30]
    assert classifier_score(one_class) == pytest.approx(1.0, rel=1e-6)
    unsure = torch.full((30, 10), 0.1)
    assert classifier_score(unsure) == pytest.approx(1.0, rel=1e-6)


def test_unclear_share_known_answers():
    assert unclear_share(torch.eye(10).repeat(3, 1)) == 0.0  # one-hot: entropy 0
    assert unclear_share(torch.full((30, 10), 0.1)) == 1.0  # uniform: entropy ln 10 = 2.3 nats
    # (0.9, 0.1): 0.325 nats, clear; (0.7, 0.3): 0.611 nats, unclear
    two = torch.tensor([[0.9, 0.1]] * 3 + [[0.7, 0.3]])
    assert unclear_share(two) == pytest.approx(0.25)


def test_confused_pairs_known_answers():
    # two samples between 4 and 9, one between 3 and 5 (either order of the two), two clear ones left out
    probs = torch.zeros(5, 10)
    probs[0, [4, 9]] = torch.tensor([0.6, 0.4])
    probs[1, [9, 4]] = torch.tensor([0.5, 0.5])
    probs[2, [5, 3]] = torch.tensor([0.7, 0.3])
    probs[3, 1] = probs[4, 7] = 1.0
    assert unclear_mask(probs).tolist() == [True, True, True, False, False]
    assert confused_pairs(probs) == [(4, 9, 2), (3, 5, 1)]
    assert confused_pairs(probs, top=1) == [(4, 9, 2)]
    assert confused_pairs(torch.eye(10)) == []


def test_frechet_distance_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    stats = feature_statistics(x)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)
    # same covariance, mean shifted by (1, 2, 2): distance ||shift||^2 = 9
    mu, cov = stats
    assert frechet_distance((mu + np.array([1.0, 2.0, 2.0]), cov), stats) == pytest.approx(9.0, rel=1e-9)
    # N(0, I) vs N(0, 4I) in 3 dims: 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance((np.zeros(3), np.eye(3)), (np.zeros(3), 4 * np.eye(3))) == pytest.approx(3.0)


@pytest.fixture(scope="module")
def evaluator():
    return DigitEvaluator()


def test_committed_classifier_is_accurate_on_held_out_digits(evaluator):
    model, meta = load_classifier()
    assert meta["held_out_accuracy"] >= 0.97
    assert len(meta["held_out_indices"]) == 1000 and len(meta["train_indices"]) == 4000
    assert not set(meta["held_out_indices"]) & set(meta["train_indices"])
    floor = evaluator.floor(1000)
    assert floor["classes"] == 10 and floor["class_kl"] < 0.01 and floor["score"] > 9.0


def test_collapsed_images_score_as_collapsed(evaluator):
    # 1,000 copies of the real digits of one class: one class covered, KL near log 10, FD far above the floor
    ones = evaluator.train_images[:4000:4][:1000]
    model = evaluator.model
    probs, _ = predict(model, to_input(ones))
    label = int(probs.argmax(1).mode().values)
    one_class = to_input(ones[probs.argmax(1) == label][:1].repeat(1000, 1, 1, 1))
    f = evaluator.figures(one_class)
    assert f["classes"] == 1 and f["class_kl"] == pytest.approx(math.log(10), abs=0.01)
    assert f["score"] == pytest.approx(1.0, abs=0.01)
    assert f["unclear"] in (0.0, 1.0)  # 1,000 copies of one image: all clear or all unclear
    assert 0 < evaluator.floor(1000)["unclear"] < 0.06  # real digits: a few are ambiguous even to the classifier
    assert f["fd"] > 10 * evaluator.floor(1000)["fd"]


def test_evaluate_cli_on_a_run_dir(tmp_path, capsys):
    cfg = GeneratorConfig(ngf=8)
    g = build_generator(cfg)
    init_weights(g, torch.Generator().manual_seed(0))
    rundir.save_generator(tmp_path, cfg, g.eval(), step=0, ema=True)
    assert main([str(tmp_path), "--samples", "200"]) == 0
    out = capsys.readouterr().out
    assert "real training digits (floor)" in out and "generator (EMA)" in out
    report = json.loads((tmp_path / "evaluation.json").read_text())
    rows = report["figures"]
    assert rows["real training digits (floor)"]["classes"] == 10
    untrained = rows["generator (EMA)"]
    assert untrained["fd"] > 5 * report["floor_fd"]  # an untrained generator is far from the digits
    # three draws of latents by default (seeds 0, 1, 2): the row is their mean, each draw's FD kept
    assert report["draws"] == 3 and sum(untrained["histogram"]) == 600
    fds = untrained["fd_draws"]
    assert len(set(fds)) == 3 and untrained["fd"] == pytest.approx(sum(fds) / 3, abs=1e-3)
    assert main([str(tmp_path), "--samples", "200", "--draws", "1", "--seed", "2", "--json", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())["figures"]["generator (EMA)"]
    assert one["fd_draws"] == [fds[2]]  # draw i is seed + i, whatever else was drawn
    # --latent-scale: the same seed's latents, scaled; 1 is the default draw itself
    assert (
        main(
            [str(tmp_path), "--samples", "200", "--draws", "1", "--seed", "2", "--latent-scale", "1", "--json", str(tmp_path / "same.json")]
        )
        == 0
    )
    assert json.loads((tmp_path / "same.json").read_text())["figures"]["generator (EMA)"]["fd_draws"] == [fds[2]]
    assert (
        main(
            [
                str(tmp_path),
                "--samples",
                "200",
                "--draws",
                "1",
                "--seed",
                "2",
                "--latent-scale",
                "0.5",
                "--json",
                str(tmp_path / "half.json"),
            ]
        )
        == 0
    )
    half = json.loads((tmp_path / "half.json").read_text())
    assert half["latent_scale"] == 0.5 and half["figures"]["generator (EMA)"]["fd_draws"] != [fds[2]]
    assert "latents scaled by 0.5" in capsys.readouterr().out
    # --unclear-grid: the unclear samples of draw 1 of generator.*, as many as the unclear share counts
    grid_png = tmp_path / "unclear.png"
    assert (
        main([str(tmp_path), "--samples", "200", "--draws", "1", "--unclear-grid", str(grid_png), "--json", str(tmp_path / "grid.json")])
        == 0
    )
    report = json.loads((tmp_path / "grid.json").read_text())
    grid = report["unclear_grid"]
    assert grid["unclear"] == round(report["figures"]["generator (EMA)"]["unclear"] * 200) > 0
    assert grid["shown"] == min(64, grid["unclear"]) and sum(n for _, _, n in grid["pairs"]) <= grid["unclear"]
    with Image.open(grid_png) as im:
        assert im.format == "PNG" and im.size[0] >= 34 * math.ceil(math.sqrt(grid["shown"]))
    assert f"{grid['unclear']} of 200 samples unclear" in capsys.readouterr().out
    # the held-out digits, which the classifier never trained on, read about as clear as the floor's
    held = report["held_out_real"]
    assert held["samples"] == 1000 and held["score"] > 9.0 and held["unclear"] < 0.06


def test_mean_figures_known_answer():
    a = {"classes": 10, "class_kl": 0.01, "score": 8.0, "unclear": 0.1, "fd": 2.0, "histogram": [1, 2], "samples": 3}
    b = {"classes": 9, "class_kl": 0.03, "score": 9.0, "unclear": 0.2, "fd": 4.0, "histogram": [3, 0], "samples": 3}
    assert mean_figures([a, b]) == {
        "classes": 9,
        "class_kl": 0.02,
        "score": 8.5,
        "unclear": 0.15,
        "fd": 3.0,
        "histogram": [4, 2],
        "samples": 6,
        "fd_draws": [2.0, 4.0],
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing"], "holds no generator"),
        (["{tmp}", "--samples", "5"], "--samples must be >= 100"),
        (["{tmp}", "--draws", "0"], "--draws must be >= 1"),
        (["{tmp}", "--latent-scale", "0"], "--latent-scale must be in (0, 10]"),
        (["{tmp}", "--classifier", "{tmp}/nope"], "no MNIST classifier"),
    ],
)
def test_evaluate_cli_bad_input_one_line(tmp_path, capsys, args, message):
    cfg = GeneratorConfig(ngf=8)
    rundir.save_generator(tmp_path, cfg, build_generator(cfg))
    with pytest.raises(SystemExit) as e:
        main([a.format(tmp=tmp_path) for a in args])
    assert_one_line_error((e.value.code, capsys.readouterr().err), message)


# --- the trainer's collapse detector and best-generator keeping ------------------------------------
TINY = ["--ngf", "8", "--ndf", "8", "--batch-size", "8", "--quiet", "--log-every", "1"]


def test_trainer_logs_coverage_keeps_the_best_and_resumes_bit_exact(tmp_path):
    from safetensors.torch import load_file

    from training.run import main

    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [*TINY, "--eval-every", "2", "--checkpoint-every", "2"]
    assert main([*args, "--steps", "4", "--out", str(straight)]) == 0
    assert main([*args, "--steps", "2", "--out", str(split)]) == 0
    assert main(["--resume", str(split), "--steps", "4", "--quiet"]) == 0

    def logged(run):  # metrics.jsonl without the wall-clock figure
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]

    evals = [r for r in logged(straight) if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert {"classes", "class_kl", "score", "fd", "fd_over_floor", "histogram"} <= r["eval"].keys()
        assert sum(r["eval"]["histogram"]) == 2000 and "eval_raw" in r
    best = min(evals, key=lambda r: r["eval"]["fd"])
    assert evals[-1]["best"] == {"fd": best["eval"]["fd"], "step": best["step"]}
    meta = json.loads((straight / "generator.json").read_text())
    assert meta["step"] == best["step"] and meta["selected_by"]["fd"] == best["eval"]["fd"] and meta["ema"] is True
    assert json.loads((straight / "generator_last.json").read_text())["step"] == 4
    assert (straight / "generator_raw.json").is_file()

    assert logged(split) == logged(straight)  # the resumed run re-derives the monitor's state
    ckpt = "checkpoints/step-00000004.safetensors"
    for name in [ckpt, "generator.safetensors", "generator_last.safetensors", "generator_raw.safetensors"]:
        a, b = load_file(str(straight / name)), load_file(str(split / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_coverage_check_leaves_training_rngs_alone_and_warns_on_a_drop(tmp_path, capsys):
    from training.config import TrainConfig
    from training.data import load_dataset
    from training.loop import Trainer

    cfg = TrainConfig(ngf=8, ndf=8, batch_size=8, steps=1, eval_every=1, log_every=1).validate()
    trainer = Trainer(cfg, load_dataset("mnist", "auto", 32, 1), tmp_path)
    trainer.top_classes = 10  # as if an earlier check had seen all ten classes
    global_rng, data_rng = torch.get_rng_state(), trainer.data_rng.get_state()
    with open(tmp_path / "metrics.jsonl", "a") as log:
        trainer.evaluate(log)  # an untrained generator covers few classes
    assert torch.equal(torch.get_rng_state(), global_rng) and torch.equal(trainer.data_rng.get_state(), data_rng)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["eval"]["classes"] < 10 and row["collapse_warning"] is True
    assert "warning: step 0: the generator covers" in capsys.readouterr().err
    assert json.loads((tmp_path / "generator.json").read_text())["selected_by"]["fd"] == row["eval"]["fd"]


# --- Stacked MNIST ---------------------------------------------------------------------------------
def test_stacked_mnist_figures(evaluator):
    from research import stacked_mnist

    images, labels = stacked_mnist.build(3000, seed=5)
    assert images.shape == (3000, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (3000, 3)
    true_modes = len(set(map(tuple, labels.tolist())))
    f = stacked_mnist.figures(to_input(images), evaluator.model)
    assert abs(f["modes"] - true_modes) <= 0.05 * true_modes  # each channel ~98% right
    one = stacked_mnist.figures(to_input(images[:1].repeat(500, 1, 1, 1)), evaluator.model)
    assert one["modes"] == 1 and one["kl"] == pytest.approx(math.log(1000), abs=1e-3)


def test_stacked_mnist_cli_build_and_evaluate(tmp_path, capsys):
    from research import stacked_mnist
    from training.data import load_dataset

    out = tmp_path / "stacked"
    assert stacked_mnist.main(["build", "--out", str(out), "--n", "40"]) == 0
    data = load_dataset(str(out), "auto", 32, 3)  # what `training.run --data DIR --channels 3` reads
    assert data.images.shape == (40, 3, 32, 32)
    assert torch.equal(data.images, stacked_mnist.build(40, seed=0)[0])  # PNGs are lossless
    with pytest.raises(SystemExit):
        stacked_mnist.main(["build", "--out", str(out), "--n", "40"])  # not empty: refused
    assert "is not empty" in capsys.readouterr().err

    run = tmp_path / "run"
    cfg = GeneratorConfig(channels=3, ngf=8)
    rundir.save_generator(run, cfg, build_generator(cfg).eval(), step=0)
    assert stacked_mnist.main(["evaluate", str(run), "--samples", "300"]) == 0
    report = json.loads((run / "stacked-mnist.json").read_text())
    assert report["figures"]["real stacked digits (floor)"]["modes"] > 200
    assert "PacDCGAN2" in capsys.readouterr().out


def test_evaluate_cli_on_a_model_artifact(service_artifact, tmp_path, capsys):
    """An artifact is evaluated from its hash-checked generator.onnx on ONNX Runtime; its folder is never written to."""
    out = tmp_path / "eval.json"
    before = sorted(p.name for p in service_artifact.iterdir())
    assert main([str(service_artifact), "--samples", "200", "--draws", "1", "--latent-scale", "0.8", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert "generator.onnx on ONNX Runtime CPU" in figures["figures"] and figures["latent_scale"] == 0.8
    assert sorted(p.name for p in service_artifact.iterdir()) == before
    with pytest.raises(SystemExit) as e:
        main([str(service_artifact), "--samples", "200"])
    assert e.value.code == 2 and "pass --json FILE" in capsys.readouterr().err
