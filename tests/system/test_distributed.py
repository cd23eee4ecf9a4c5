"""Data-parallel training: torchrun with 2 CPU processes (gloo), real runs end to end.

What is checked:
- after every step both ranks hold the same weights (their checksums, logged per step, are equal, and
  the last one is the checksum of the weights in the checkpoint);
- 2 processes x 8 images compute what one process computes at the global batch of 16, within 1e-5;
- resuming under torchrun ends bit-identical to never stopping (each rank's dropout RNG included).

The one-process reference. With the default per-process BatchNorm, each rank normalises over its own
8 images; one process at 16 normalises over 16, a different function (its weights differ from the
DDP run's by ~2e-3 after 4 steps). So the reference is the single-process Trainer at batch 16 whose
generator is applied to each rank's half of the batch separately (`PerRankBatches`), with dropout 0
(masks are per rank) and a per-sample discriminator norm (--d-norm layernorm; BatchNorm in D would
need the same split). It trains on the same images and latents: the ranks slice one shared epoch
order and one shared latent draw. What is left is float32 summation order: DDP averages two
per-rank gradients, one process sums 16 per-sample terms at once: ~1e-7 here. Tolerance 1e-5: far
below what any real difference (BatchNorm statistics, a wrong shard, wrong latents) produces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from common.cli import UserError
from common.paths import REPO_ROOT as REPO
from training import checkpoint
from training.config import TrainConfig
from training.data import load_dataset
from training.distributed import Dist, check_sync_batchnorm, replica_checksum
from training.loop import Trainer
from training.run import main

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run

TINY = ["--ngf", "8", "--ndf", "8", "--batch-size", "8", "--quiet", "--device", "cpu", "--log-every", "1"]
SAME_MATH = ["--dropout", "0", "--d-norm", "layernorm"]
TOLERANCE = 1e-5  # max |weight difference| vs the one-process reference; see the module docstring


def torchrun(*args: str) -> None:
    """`torchrun --standalone --nproc-per-node 2 -m training.run ...`: rendezvous on a free localhost port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "training.run", *TINY, *args]
    # gloo on loopback only; a native abort (SIGABRT) prints the Python stack it happened under
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_config(run: Path, **changes) -> TrainConfig:
    saved = json.loads((run / "config.json").read_text())
    return TrainConfig.from_dict({**{k: v for k, v in saved.items() if k in TrainConfig.fields()}, **changes}, "test")


class PerRankBatches(nn.Module):
    """`module` applied to each rank's slice of the global batch on its own: BatchNorm statistics per
    slice, as per-process BatchNorm under DDP computes them. (B, ...) -> (B, ...)."""

    def __init__(self, module: nn.Module, ranks: int):
        super().__init__()
        self.module, self.ranks = module, ranks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.module(part) for part in x.chunk(self.ranks)])


def max_param_diff(saved: dict[str, torch.Tensor], trainer: Trainer) -> float:
    return max(
        (saved[f"{name}.{k}"] - p.detach()).abs().max().item()
        for name, m in (("G", trainer.G), ("D", trainer.D))
        for k, p in m.named_parameters()
    )


def test_ranks_stay_identical_and_match_one_process_at_the_global_batch(tmp_path):
    steps = 4
    run = tmp_path / "ddp"
    torchrun("--steps", str(steps), *SAME_MATH, "--out", str(run))
    saved = json.loads((run / "config.json").read_text())
    assert saved["world_size"] == 2 and saved["batch_size"] == 8

    # (1) both ranks' weights after every step: equal checksums, and the weights really move
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    sums = [r["replica_checksums"] for r in rows]
    assert all(len(s) == 2 and s[0] == s[1] for s in sums), sums
    assert len({s[0] for s in sums}) == steps
    # the logged checksum is that of the weights rank 0 saved
    data = load_dataset("mnist", "auto", 32, 1)
    restored = Trainer(run_config(run), data, tmp_path / "scratch")
    checkpoint.load(
        checkpoint.latest(run), restored._modules(), {"opt_g": restored.opt_g, "opt_d": restored.opt_d}, restored.data_rng, world_size=2
    )
    assert int(replica_checksum([restored.G, restored.D])) == sums[-1][0]

    # (2) the same math in one process at the global batch of 16
    ddp_weights = load_file(str(run / "checkpoints" / f"step-{steps:08d}.safetensors"))
    reference = Trainer(run_config(run, batch_size=16), data, tmp_path / "scratch")
    reference.G_train = PerRankBatches(reference.G, 2)
    ref_stats = [reference.train_step() for _ in range(steps)]
    assert max_param_diff(ddp_weights, reference) <= TOLERANCE
    for row, st in zip(rows, ref_stats):  # the logged losses are the global batch's (averaged over ranks)
        assert row["loss_d"] == pytest.approx(float(st["loss_d"]), abs=1e-4)
        assert row["loss_g"] == pytest.approx(float(st["loss_g"]), abs=1e-4)
    # and the tolerance tells real differences apart: BatchNorm over all 16 images at once is one
    plain = Trainer(run_config(run, batch_size=16), data, tmp_path / "scratch")
    for _ in range(steps):
        plain.train_step()
    assert max_param_diff(ddp_weights, plain) > 100 * TOLERANCE


def test_resume_under_torchrun_is_bit_exact(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--checkpoint-every", "3"]  # default dropout 0.25: each rank's own RNG stream matters
    torchrun("--steps", "6", *common, "--out", str(straight))
    torchrun("--steps", "3", *common, "--out", str(split))
    torchrun("--resume", str(split), "--steps", "6")
    a = load_file(str(straight / "checkpoints" / "step-00000006.safetensors"))
    b = load_file(str(split / "checkpoints" / "step-00000006.safetensors"))
    assert a.keys() == b.keys() and "rng.rank1.torch" in a
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"
    assert not torch.equal(a["rng.torch"], a["rng.rank1.torch"])  # the ranks' dropout streams are distinct
    assert [r["step"] for r in metrics(split)] == list(range(1, 7))
    # a 2-process run cannot be resumed by one process: its global batch and shards would change
    with pytest.raises(SystemExit) as exit_:
        main(["--resume", str(split), "--steps", "8", "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by 2 process(es)" in err[0], err


def test_sync_batchnorm_refused_where_it_cannot_work(capsys):
    with pytest.raises(UserError, match="CUDA only"):
        check_sync_batchnorm(Dist(rank=0, world_size=2))  # what a torchrun rank on CPU is
    check_sync_batchnorm(Dist())  # one process: nothing to synchronise, nothing refused
    # unrolling differentiates through D's backward, which SyncBatchNorm cannot
    with pytest.raises(SystemExit) as exit_:
        main(["--sync-bn", "--unroll", "2", "--steps", "1"])
    assert exit_.value.code == 2 and "--d-norm layernorm" in capsys.readouterr().err
