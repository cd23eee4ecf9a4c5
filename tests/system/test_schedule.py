"""Sample grids, evaluations and final saves take a bounded share of a run (training/schedule.py, training/loop.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import TrainConfig
from training.data import load_dataset
from training.loop import Trainer
from training.schedule import FIRST_GRID_S, GRID_SHARE, MIN_GRID_INTERVAL_S, GridSchedule, RunClock


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """128 random 32x32 RGB images, PNG and JPEG alternately: a user's own small data set."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(128):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))
    return folder


def tiny_trainer(images, run_dir, **settings) -> Trainer:
    cfg = TrainConfig(data=str(images), ngf=8, ndf=8, **settings).validate()
    run_dir.mkdir()
    return Trainer(cfg, load_dataset(cfg.data, "auto", 32, 3), run_dir)


def test_a_small_data_set_spends_a_small_share_of_its_run_on_sample_grids(images, tmp_path):
    """Epochs of 4 steps, 15 of them: a grid per epoch (the old rule) would be most of the run."""
    trainer = tiny_trainer(images, tmp_path / "run", batch_size=32, steps=60, log_every=10)
    assert trainer.steps_per_epoch == 4

    grid_s, draw = [0.0], trainer.save_samples

    def timed_draw(name):  # the test's own clock around every grid the loop draws
        t = time.perf_counter()
        draw(name)
        if name != "final":
            grid_s[0] += time.perf_counter() - t

    trainer.save_samples = timed_draw
    t = time.perf_counter()
    assert trainer.fit(progress=False) == 0
    run_s = time.perf_counter() - t

    grids = sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png"))
    # A first grid at the first epoch's end, and no other in a run far shorter than MIN_GRID_INTERVAL_S
    assert run_s < MIN_GRID_INTERVAL_S and grids == ["final.png", "step-00000004.png"], grids
    # That first grid may overdraw the share, by design (3-6% of this run); a grid per epoch, 15 of them, took a third.
    assert grid_s[0] / run_s <= 0.15, f"sample grids took {grid_s[0]:.2f} s of a {run_s:.2f} s run"
    # BatchNorm statistics recomputed only for weights not seen before: each grid in the loop, then the final
    # EMA and raw generators; the final grid reuses the final EMA generator's
    assert trainer.clock.counts["recompute"] == 1 + 2


def simulate(schedule: GridSchedule, steps: int, step_s: float, grid_s: float, epoch_steps: int) -> tuple[list[float], RunClock]:
    """The schedule's decisions over a run whose steps and grids take fixed times (no waiting: the clock is fed)."""
    clock, drawn_at = RunClock(), []
    for step in range(1, steps + 1):
        clock.spent["train"] = step * step_s
        if schedule.due(step, step % epoch_steps == 0, clock):
            drawn_at.append(clock.train_s)
            clock.spent["sample"] = clock.spent.get("sample", 0.0) + grid_s
            clock.last["sample"] = grid_s
            schedule.drawn(clock)
    return drawn_at, clock


@pytest.mark.parametrize(
    "step_s, grid_s, epoch_steps",
    [
        (2.3, 2.0, 4),  # 300 images of 64x64 on a CPU: epochs of 4 steps
        (2.3, 2.0, 10_000),  # a large data set: the first epoch would take hours
        (0.01, 0.05, 78),  # a GPU: cheap grids, short epochs
    ],
)
def test_grid_schedule_first_grid_early_then_within_the_budget(step_s, grid_s, epoch_steps):
    drawn_at, clock = simulate(GridSchedule(), 20_000, step_s, grid_s, epoch_steps)
    assert drawn_at[0] <= min(FIRST_GRID_S, epoch_steps * step_s) + step_s  # something to look at, early
    # after the first: within the share, and never more often than the minimum interval
    assert (len(drawn_at) - 1) * grid_s <= GRID_SHARE * clock.train_s
    assert all(b - a >= MIN_GRID_INTERVAL_S for a, b in zip(drawn_at, drawn_at[1:]))
    assert len(drawn_at) >= min(clock.train_s / max(MIN_GRID_INTERVAL_S, grid_s / GRID_SHARE), 10) - 1


def test_grid_every_n_steps_when_asked():
    drawn_at, _ = simulate(GridSchedule(every_steps=7), 30, 1.0, 5.0, 4)
    assert drawn_at == [7.0, 14.0, 21.0, 28.0]


def test_eta_counts_the_grids_checkpoints_evaluations_and_final_saves_to_come():
    clock = RunClock(step_s=2.0, last={"sample": 3.0, "checkpoint": 0.5, "eval": 4.0, "recompute": 1.0})
    assert clock.eta_s(steps_left=10, grids_left=2, checkpoints_left=1, evals_left=1, final_recomputes=1) == 20 + 6 + 0.5 + 4 + 1
    assert RunClock().eta_s(10, 0, 0, 0, 0) != RunClock().eta_s(10, 0, 0, 0, 0)  # nan until a step was timed


def test_trainer_eta_includes_what_is_left_besides_steps(images, tmp_path):
    trainer = tiny_trainer(images, tmp_path / "run", batch_size=8, steps=20, checkpoint_every=5)
    trainer.clock = RunClock(step_s=1.0, last={"sample": 2.0, "checkpoint": 3.0, "recompute": 1.0})
    trainer.step = 10
    # 10 steps, checkpoints at 15 and 20, the grids (the final one, and 10 s of training / a grid per 100 s: 2 s
    # cost / 2% share) and the raw generator's recompute at the end
    assert trainer.eta_s() == pytest.approx(10 + 2 * 3.0 + (1 + 10 / 100) * 2.0 + 1.0)


def test_grids_leave_the_training_rngs_alone(images, tmp_path):
    """A grid drawn or not drawn (the schedule reads the clock) must not change the weights."""
    trainer = tiny_trainer(images, tmp_path / "run", batch_size=8, steps=1)
    global_rng, data_rng = torch.get_rng_state(), trainer.data_rng.get_state()
    trainer.save_samples("a")
    trainer.save_samples("b")
    assert torch.equal(torch.get_rng_state(), global_rng) and torch.equal(trainer.data_rng.get_state(), data_rng)
    assert trainer.clock.counts["recompute"] == 1  # the second grid reused the first's generator
