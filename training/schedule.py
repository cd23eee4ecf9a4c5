"""What the trainer does between training steps, when, and what it costs: the run's clock and the grid schedule.

A sample grid costs a BatchNorm recompute and a forward pass of the generator: at 64x64 on a CPU about as much
as a training step. One grid per epoch, on a small data set whose epochs are a few steps, ate most of the run.
So by default grids are drawn on a time budget: the first at the end of the first epoch or after
FIRST_GRID_S seconds of training, whichever comes first (something to look at within the first minute), then
whenever the grids so far plus the next stay within GRID_SHARE of the training time, and at most one every
MIN_GRID_INTERVAL_S seconds of training (a fast GPU would otherwise write hundreds). `--sample-every N` asks
for a grid every N steps instead.

The clock times the training steps and each kind of work between them; the progress bar's ETA is built from
those times (`RunClock.eta_s`), so it includes the grids, checkpoints, evaluations and final saves to come.
Grids are drawn on rank 0 alone and consume no training RNG, so a time-based schedule leaves the weights
alone: the same seed gives the same weights however many grids a run drew.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

GRID_SHARE = 0.02  # at most this share of the training time goes to sample grids (the first may overdraw it)
FIRST_GRID_S = 30.0  # the first grid at the latest after this much training time
MIN_GRID_INTERVAL_S = 60.0  # and grids no more often than this
# what RunClock times, as the end-of-run summary names it ("recompute" is timed too, inside the others)
KINDS = {"train": "training steps", "sample": "sample grids", "checkpoint": "checkpoints", "eval": "evaluations", "final": "final saves"}


@dataclass
class RunClock:
    """Wall time of one session of a run: training steps, and each kind of work between them."""

    spent: dict[str, float] = field(default_factory=dict)  # kind -> seconds
    counts: dict[str, int] = field(default_factory=dict)  # kind -> times done
    last: dict[str, float] = field(default_factory=dict)  # kind -> seconds of its latest occurrence
    step_s: float | None = None  # recent seconds per training step (an exponential average)
    started: float = field(default_factory=time.perf_counter)

    @contextlib.contextmanager
    def timing(self, kind: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.spent[kind] = self.spent.get(kind, 0.0) + dt
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.last[kind] = dt
            if kind == "train":
                self.step_s = dt if self.step_s is None else 0.9 * self.step_s + 0.1 * dt

    @property
    def train_s(self) -> float:
        return self.spent.get("train", 0.0)

    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    def eta_s(self, steps_left: int, grids_left: float, checkpoints_left: int, evals_left: int, final_recomputes: int) -> float:
        """Seconds to the end of the run: the steps left at the recent step time, plus the grids, checkpoints,
        evaluations and final BatchNorm recomputes to come at the cost each last had (0 for a kind not yet seen)."""
        if self.step_s is None:
            return float("nan")
        last = lambda kind: self.last.get(kind, 0.0)  # noqa: E731
        return (
            steps_left * self.step_s
            + grids_left * last("sample")
            + checkpoints_left * last("checkpoint")
            + evals_left * last("eval")
            + final_recomputes * last("recompute")
        )

    def summary(self) -> str:
        """`2m 21s: training steps 96.1%, sample grids (2) 1.9%, ...`: where this session's time went."""
        wall = self.wall_s()
        parts = [
            f"{name}{f' ({self.counts[k]})' if k == 'sample' else ''} {self.spent[k] / wall:.1%}"
            for k, name in KINDS.items()
            if k in self.spent
        ]
        other = max(wall - sum(self.spent.get(k, 0.0) for k in KINDS), 0.0)
        minutes, seconds = divmod(round(wall), 60)
        return f"{minutes}m {seconds:02d}s: " + ", ".join(parts) + f", other {other / wall:.1%}"


@dataclass
class GridSchedule:
    """When to draw a sample grid (see the module docstring)."""

    every_steps: int = 0  # --sample-every; 0 = on the time budget
    share: float = GRID_SHARE
    first_s: float = FIRST_GRID_S
    min_interval_s: float = MIN_GRID_INTERVAL_S
    last_at_s: float | None = None  # training time at the latest grid of this session

    def due(self, step: int, epoch_done: bool, clock: RunClock) -> bool:
        """After training step `step`: draw a grid now? (epoch_done: the step ended an epoch)"""
        if self.every_steps:
            return step % self.every_steps == 0
        train_s = clock.train_s
        if self.last_at_s is None:
            return epoch_done or train_s >= self.first_s
        cost = clock.last.get("sample", 0.0)
        within_budget = clock.spent.get("sample", 0.0) + cost <= self.share * train_s
        return within_budget and train_s - self.last_at_s >= self.min_interval_s

    def drawn(self, clock: RunClock) -> None:
        self.last_at_s = clock.train_s

    def expected_left(self, step: int, total_steps: int, clock: RunClock) -> float:
        """About how many grids are still to come before the final one (for the ETA)."""
        if self.every_steps:
            return total_steps // self.every_steps - step // self.every_steps
        if clock.step_s is None:
            return 0.0
        cost = clock.last.get("sample", 0.0)
        interval = max(self.min_interval_s, cost / self.share) if cost else self.first_s
        return (total_steps - step) * clock.step_s / interval
