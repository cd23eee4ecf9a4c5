"""The trainer end to end on tiny configs: run dir contract, bit-exact resume, config files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.paths import REPO_ROOT as REPO
from training import rundir
from training.run import main

TINY = ["--ngf", "8", "--ndf", "8", "--batch-size", "16", "--quiet", "--log-every", "2"]


def train(out: Path, *args: str) -> None:
    assert main([*TINY, "--out", str(out), *args]) == 0


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_run_dir_contract(tmp_path):
    run = tmp_path / "run"
    train(run, "--steps", "3", "--seed", "5")
    for name in [
        "config.json",
        "generator.json",
        "generator.safetensors",
        "generator_raw.safetensors",
        "metrics.jsonl",
        "loss.png",
        "samples/final.png",
    ]:
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["seed"] == 5 and cfg["steps"] == 3 and cfg["data"] == "mnist" and cfg["data_images"] == 5000
    assert "training.run" in cfg["command"][-1]
    g_cfg, g, meta = rundir.load_generator(run)
    assert (g_cfg.image_size, g_cfg.channels, g_cfg.nz, g_cfg.ngf) == (32, 1, 100, 8)
    assert meta["ema"] is True and meta["step"] == 3
    with torch.no_grad():
        x = g(torch.randn(4, 100))
    assert x.shape == (4, 1, 32, 32) and x.abs().max() <= 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3]
    assert {"loss_d", "loss_g", "d_x", "d_g_z", "images_per_s"} <= rows[0].keys()


def test_same_seed_same_weights_and_resume_is_bit_exact(tmp_path):
    straight, again, split = tmp_path / "straight", tmp_path / "again", tmp_path / "split"
    train(straight, "--steps", "8", "--checkpoint-every", "3")
    train(again, "--steps", "8", "--checkpoint-every", "3")
    train(split, "--steps", "5", "--checkpoint-every", "3")
    assert main(["--resume", str(split), "--steps", "8", "--quiet"]) == 0
    for stem in ["generator", "generator_raw"]:
        assert_bit_identical(weights(straight / f"{stem}.safetensors"), weights(again / f"{stem}.safetensors"))
        assert_bit_identical(weights(straight / f"{stem}.safetensors"), weights(split / f"{stem}.safetensors"))
    ckpt = lambda run: weights(run / "checkpoints" / "step-00000008.safetensors")  # noqa: E731
    assert_bit_identical(ckpt(straight), ckpt(split))  # D, both Adam states and the RNGs too
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 5, 6, 8]  # the resumed run logs on without gaps or repeats


def test_lr_decay_is_linear_to_zero_and_may_be_set_on_resume(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(straight, "--steps", "8", "--lr-decay-start", "4")
    lrs = [json.loads(line)["lr"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([2e-4, 2e-4, 2e-4 * 3 / 4, 2e-4 / 4])  # steps 2, 4, 6, 8 of 8: (8 - i) / (8 - 4) from i = 4
    train(split, "--steps", "5")  # constant lr so far: the same steps as the straight run's first five
    assert main(["--resume", str(split), "--steps", "8", "--lr-decay-start", "4", "--quiet"]) == 0
    assert_bit_identical(weights(straight / "generator.safetensors"), weights(split / "generator.safetensors"))
    assert json.loads((split / "config.json").read_text())["lr_decay_start"] == 4


def test_different_seed_different_weights(tmp_path):
    train(tmp_path / "a", "--steps", "1", "--seed", "1")
    train(tmp_path / "b", "--steps", "1", "--seed", "2")
    a, b = weights(tmp_path / "a/generator.safetensors"), weights(tmp_path / "b/generator.safetensors")
    assert not torch.equal(a["project.weight"], b["project.weight"])


def test_sigint_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    run = tmp_path / "interrupted"
    cmd = [
        sys.executable,
        "-m",
        "training.run",
        *TINY,
        "--steps",
        "100000",
        "--checkpoint-every",
        "100000",
        "--ema-decay",
        "0.9",
        "--out",
        str(run),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 2:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "trainer never logged"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "--resume" in err and "Traceback" not in err
    stopped_at = json.loads(next(iter(sorted((run / "checkpoints").glob("*.json")))).read_text())["step"]
    assert 4 <= stopped_at < 100000
    target = str(stopped_at + 3)
    subprocess.run(
        [sys.executable, "-m", "training.run", "--resume", str(run), "--steps", target, "--quiet"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    straight = tmp_path / "straight"
    # a process like the interrupted one: same thread count whatever earlier tests set in this one
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.run",
            *TINY,
            "--steps",
            target,
            "--checkpoint-every",
            "100000",
            "--ema-decay",
            "0.9",
            "--out",
            str(straight),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert_bit_identical(weights(run / "generator.safetensors"), weights(straight / "generator.safetensors"))


def test_config_file_with_flag_override(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("steps: 2\nbatch-size: 8\nseed: 7\narch: convtranspose\n")
    run = tmp_path / "run"
    train(run, "--config", str(cfg), "--seed", "9")
    saved = json.loads((run / "config.json").read_text())
    assert (saved["steps"], saved["batch_size"], saved["seed"], saved["arch"]) == (2, 16, 9, "convtranspose")
    # TINY's --batch-size 16 is a flag too: flags win over the file


def test_dry_run_writes_a_complete_run_dir(tmp_path):
    run = tmp_path / "dry"
    assert main(["--dry-run", "--quiet", "--ngf", "8", "--ndf", "8", "--out", str(run)]) == 0
    assert json.loads((run / "generator.json").read_text())["step"] == 1
    assert (run / "checkpoints" / "step-00000001.safetensors").is_file()


@pytest.mark.parametrize("size", [64, 128])
def test_larger_sizes_train(tmp_path, size):
    run = tmp_path / f"s{size}"
    train(run, "--steps", "1", "--image-size", str(size), "--batch-size", "4", "--arch", "convtranspose")
    g_cfg, g, _ = rundir.load_generator(run)
    assert g(torch.randn(2, 100)).shape == (2, 1, size, size)


def test_init_from_fine_tunes_from_the_source_weights_with_new_settings(tmp_path):
    source, tuned, fresh = tmp_path / "source", tmp_path / "tuned", tmp_path / "fresh"
    train(source, "--steps", "3")
    # a learning rate too small to move a weight: after one step the networks are the source's
    common = ["--steps", "1", "--lr", "1e-20", "--seed", "7", "--augment", "translation,cutout"]
    train(tuned, *common, "--init-from", str(source))
    train(fresh, *common)
    src = weights(source / "checkpoints" / "step-00000003.safetensors")
    for other, same in [(tuned, True), (fresh, False)]:
        ckpt = weights(other / "checkpoints" / "step-00000001.safetensors")
        # the parameters (BatchNorm's running statistics move with any forward pass)
        params = [k for k in src if k.startswith(("G.", "D.")) and "running_" not in k and "num_batches" not in k]
        assert len(params) > 10
        assert all(torch.allclose(ckpt[k], src[k], atol=1e-6) == same for k in params), other.name
    tuned_ckpt = weights(tuned / "checkpoints" / "step-00000001.safetensors")
    assert tuned_ckpt["opt_d.state.0.step"].item() == 4, "the Adam moments continue the source's (3 steps + 1)"
    cfg = json.loads((tuned / "config.json").read_text())
    src_cfg = json.loads((source / "config.json").read_text())
    assert cfg["init_from"] == str(source) and cfg["augment"] == "translation,cutout" and cfg["lr"] == 1e-20
    assert cfg["init_checkpoint"]["step"] == 3 and cfg["init_checkpoint"]["checkpoint"].endswith("step-00000003")
    assert cfg["command"][:-1] == src_cfg["command"] and "--init-from" in cfg["command"][-1]
    # resuming the fine-tune keeps its record of where it started
    assert main(["--resume", str(tuned), "--steps", "2", "--quiet"]) == 0
    assert json.loads((tuned / "config.json").read_text())["init_checkpoint"] == cfg["init_checkpoint"]


def test_default_recipe_file_holds_the_committed_models_settings():
    """configs/default.yaml, read as `--config` reads it, gives every setting the default model was trained with."""
    from training.config import TrainConfig, read_config_file

    recipe = TrainConfig.from_dict(read_config_file(str(REPO / "configs" / "default.yaml")), "configs/default.yaml").validate()
    manifest = json.loads((REPO / "artifacts" / "default" / "manifest.json").read_text())
    trained = {k: v for k, v in manifest["source"]["config"].items() if k in TrainConfig.fields()}
    assert recipe.to_dict() == trained


def test_the_recipe_file_is_recorded_and_kept_through_resume(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps: 2\nseed: 3\n")
    run = tmp_path / "run"
    train(run, "--config", str(recipe))
    assert json.loads((run / "config.json").read_text())["config_file"] == str(recipe)
    assert main(["--resume", str(run), "--steps", "3", "--quiet"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config_file"] == str(recipe) and cfg["steps"] == 3 and cfg["seed"] == 3


def test_each_setting_is_declared_once_with_help_checks_and_resumability():
    """A new TrainConfig field must come through `setting(...)`: its flag, --help and checks are derived from it."""
    from training.config import TrainConfig
    from training.run import build_parser

    help_text = build_parser().format_help()
    for name, field in TrainConfig.fields().items():
        assert field.metadata.get("help"), f"{name} is not declared with setting()"
        assert "--" + name.replace("_", "-") in help_text
    assert TrainConfig.resumable() == {"steps", "epochs", "lr_decay_start", "log_every", "checkpoint_every", "sample_every", "eval_every"}
