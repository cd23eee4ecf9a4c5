"""Bad input to `python -m training.run`: one line on stderr, exit 2, no traceback, nothing lost."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import assert_one_line_error

TINY = ["--ngf", "8", "--ndf", "8", "--batch-size", "4", "--quiet"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.run", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run_cli(*TINY, "--steps", "2", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    return run


def test_missing_data_path(tmp_path):
    assert_one_line_error(run_cli("--data", str(tmp_path / "nope")), "not found")


def test_empty_folder(tmp_path):
    assert_one_line_error(run_cli("--data", str(tmp_path)), "no PNG/JPEG images")


def test_unreadable_image_names_the_file(tmp_path):
    from PIL import Image

    Image.new("L", (32, 32)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert_one_line_error(run_cli("--data", str(tmp_path), *TINY), "broken.png")


def test_image_size_not_a_power_of_two():
    assert_one_line_error(run_cli("--image-size", "48"), "power of two")


def test_nz_not_positive():
    assert_one_line_error(run_cli("--nz", "0"), "nz")


def test_negative_lr_decay_start():
    assert_one_line_error(run_cli("--lr-decay-start", "-1"), "--lr-decay-start must be >= 0")


def test_resume_refuses_to_rewrite_the_lr_of_steps_taken(tmp_path):
    constant, decaying = tmp_path / "constant", tmp_path / "decaying"
    assert run_cli(*TINY, "--steps", "3", "--out", str(constant)).returncode == 0
    # a decay from step 1 of 6 scales the 0-based step 2 by (6 - 2) / (6 - 1): the third step, already taken
    assert_one_line_error(
        run_cli("--resume", str(constant), "--steps", "6", "--lr-decay-start", "1"),
        "would change the learning rate of step 3",
        "constant lr -> decay from step 1 to 6",
    )
    assert run_cli(*TINY, "--steps", "4", "--lr-decay-start", "1", "--out", str(decaying)).returncode == 0
    log = (decaying / "metrics.jsonl").read_text()
    assert_one_line_error(run_cli("--resume", str(decaying), "--steps", "6"), "decay from step 1 to 4 -> decay from step 1 to 6")
    assert (decaying / "metrics.jsonl").read_text() == log  # the refusal touched nothing
    assert run_cli("--resume", str(constant), "--steps", "6", "--lr-decay-start", "3").returncode == 0  # from here on: allowed


def test_unknown_flag_and_bad_choice():
    assert_one_line_error(run_cli("--arch", "resnet"), "invalid choice")
    assert_one_line_error(run_cli("--stepz", "3"), "unrecognized")


def test_bad_config_file(tmp_path):
    (tmp_path / "c.json").write_text("{not json")
    assert_one_line_error(run_cli("--config", str(tmp_path / "c.json")), "does not parse")
    (tmp_path / "d.json").write_text('{"learning_rate": 1}')
    assert_one_line_error(run_cli("--config", str(tmp_path / "d.json")), "learning_rate")


def test_resume_dir_that_is_not_a_run_dir(tmp_path):
    assert_one_line_error(run_cli("--resume", str(tmp_path)), "not a run dir")


def test_out_dir_that_already_holds_a_run(tiny_run):
    assert_one_line_error(run_cli(*TINY, "--steps", "1", "--out", str(tiny_run)), "already holds a run")


def test_resume_refuses_to_change_the_trajectory(tiny_run):
    assert_one_line_error(run_cli("--resume", str(tiny_run), "--lr", "0.1"), "lr")


def test_corrupted_checkpoint_is_detected_not_loaded(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    ckpt = next((run / "checkpoints").glob("*.safetensors"))
    data = bytearray(ckpt.read_bytes())
    data[-10] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    assert_one_line_error(run_cli("--resume", str(run), "--steps", "4"), "corrupted")


def test_bad_augment_policy():
    assert_one_line_error(run_cli(*TINY, "--steps", "1", "--augment", "color,flip"), "--augment", "'flip'", "color, translation, cutout")


def test_init_from_needs_a_run_dir_with_checkpoints_and_the_same_networks(tiny_run, tmp_path):
    assert_one_line_error(run_cli(*TINY, "--steps", "1", "--init-from", str(tmp_path)), "--init-from", "not a run dir")
    no_ckpt = tmp_path / "no-ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text((tiny_run / "config.json").read_text())
    assert_one_line_error(run_cli(*TINY, "--steps", "1", "--init-from", str(no_ckpt), "--out", str(tmp_path / "a")), "no checkpoints")
    wider = [*TINY[:1], "16", *TINY[2:]]  # --ngf 16 against the source's 8
    assert_one_line_error(
        run_cli(*wider, "--steps", "1", "--init-from", str(tiny_run), "--out", str(tmp_path / "b")), "does not match this run's networks"
    )


def test_resume_refuses_to_switch_augmentation_on(tiny_run):
    assert_one_line_error(run_cli("--resume", str(tiny_run), "--augment", "cutout"), "augment")
