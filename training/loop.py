"""The training loop: one discriminator update, then one generator update, per step."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from common.cli import UserError
from common.files import atomic_write_json
from training import checkpoint, rundir
from training.augment import DiffAugment
from training.config import TrainConfig
from training.data import Dataset, to_unit_range
from training.distributed import Dist, check_sync_batchnorm, data_parallel, rank_seed, replica_checksum
from training.ema import EMA, recompute_batchnorm
from training.evaluate import GENERATOR_LAST, CoverageMonitor
from training.models import Discriminator, DiscriminatorConfig, GeneratorConfig, build_generator, init_weights
from training.objectives import build_objective
from training.plots import save_grid, save_loss_curve
from training.schedule import GridSchedule, RunClock

# batches of 128 latents for the BatchNorm statistics of a generator ready for inference (grids, evaluations,
# generator.*): the fewest that keep the default model's images and quality figures within the tolerance
# measured by `python -m research.bn_batches` (docs/training.md, "Sample grids and the run's time")
BN_BATCHES = 2


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes the current step, checkpoints and exits.

    Python runs the handler in the main thread, but the kernel delivers a process signal to any thread that
    does not block it, torch's intra-op workers included, in the middle of a kernel. `python -m training.run`
    blocks the stop signals before torch starts a thread (threads inherit the mask); on entry the intra-op
    pool is started (a parallel op) while they are still blocked, then the main thread alone unblocks them."""

    signum: int = 0
    _previous: dict = field(default_factory=dict)
    _mask: set = field(default_factory=set)

    def __enter__(self):
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        torch.ones(1 << 20).sum()  # starts the intra-op thread pool, if not yet started, with the current mask
        self._mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        for s, h in self._previous.items():
            signal.signal(s, h)


class ProgressBar(tqdm):
    """tqdm whose time left is the run's ETA (`eta_s`, set by the loop: the steps left plus the grids,
    checkpoints, evaluations and final saves to come), not tqdm's steps left / step rate."""

    eta_s: float = float("nan")
    FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{eta}, {rate_fmt}{postfix}]"

    @property
    def format_dict(self):
        d = super().format_dict
        d["eta"] = "?" if self.eta_s != self.eta_s else self.format_interval(self.eta_s)  # nan: not known yet
        return d


def lr_factor(step: int, decay_start: int, total_steps: int) -> float:
    """Multiplier of --lr for step `step` (0-based) of `total_steps`: 1, then linear to 0 from decay_start on
    (decay_start 0, or at or past the end: constant)."""
    if not decay_start or step < decay_start or decay_start >= total_steps:
        return 1.0
    return (total_steps - step) / (total_steps - decay_start)


class Trainer:
    """One process's trainer; under torchrun (`dist` from training.distributed.setup) one rank of the job."""

    def __init__(self, cfg: TrainConfig, data: Dataset, run_dir: Path, dist: Dist | None = None):
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.dist = dist or Dist(device=pick_device(cfg.device))
        self.device = self.dist.device
        # a step takes this many images from the epoch order; rank r trains on its r-th slice of batch_size
        self.global_batch = cfg.batch_size * self.dist.world_size
        channels = data.images.shape[1]
        # dropout and anything else on the global RNG: each rank its own stream
        torch.manual_seed(rank_seed(cfg.seed, self.dist.rank) if self.dist.enabled else cfg.seed)
        self.data_rng = torch.Generator().manual_seed(cfg.seed + 1)  # data order and latents, alike on every rank
        init_rng = torch.Generator().manual_seed(cfg.seed + 2)

        self.g_cfg = GeneratorConfig(
            arch=cfg.arch, nz=cfg.nz, image_size=cfg.image_size, channels=channels, ngf=cfg.ngf, components=cfg.components
        )
        self.G = build_generator(self.g_cfg)
        self.D = Discriminator(
            DiscriminatorConfig(image_size=cfg.image_size, channels=channels, ndf=cfg.ndf, dropout=cfg.dropout, norm=cfg.d_norm)
        )
        init_weights(self.G, init_rng)
        init_weights(self.D, init_rng)
        self.cuda = self.device.type == "cuda"
        memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        self.G.to(self.device, memory_format=memory_format)
        self.D.to(self.device, memory_format=memory_format)
        if cfg.sync_bn and self.dist.enabled:
            check_sync_batchnorm(self.dist)
            self.G, self.D = (torch.nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in (self.G, self.D))
        # what the training step calls: DDP wrappers (gradients averaged over ranks), or G and D themselves
        self.G_train, self.D_train = data_parallel(self.G, self.dist), data_parallel(self.D, self.dist)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas)
        # unrolling replays opt_d's update; --augment transforms every batch D sees (training/augment.py)
        self.objective = build_objective(cfg.loss, cfg.unroll, self.opt_d, augment=DiffAugment(cfg.augment), r1=cfg.r1)
        self.ema = EMA(self.G, cfg.ema_decay) if cfg.ema else None
        # 64 fixed latents: sample grids are comparable across epochs
        self.fixed_noise = torch.randn(64, cfg.nz, generator=torch.Generator().manual_seed(cfg.seed + 3)).to(self.device)
        self.images = data.images.to(self.device)
        self.steps_per_epoch = len(data) // self.global_batch
        if self.steps_per_epoch == 0:
            per = f" ({self.dist.world_size} processes x {cfg.batch_size})" if self.dist.enabled else ""
            raise UserError(f"the data has {len(data)} images, fewer than one batch of {self.global_batch}{per}; lower --batch-size")
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        self.step, self.epoch, self.position = 0, 0, 0
        self.lr = cfg.lr  # of the latest step (--lr-decay-start lowers it)
        self.order = torch.randperm(len(data), generator=self.data_rng)
        # collapse detector: coverage figures every eval_every steps; generator.* keeps the best
        self.checks = self._coverage_checks_apply()
        self.monitor: CoverageMonitor | None = None  # built at the first check (loads the classifier)
        self.best = None  # (Frechet distance, step) of the generator in generator.*, once evaluated
        self.top_classes = 0  # most classes covered so far; a drop below it prints a warning
        self.last_eval_step = -1
        # what the run's time goes to, and when to stop training for a sample grid (training/schedule.py)
        self.clock = RunClock()
        self.grids = GridSchedule(every_steps=cfg.sample_every)
        self.checkpointed_step = -1
        # generators ready for inference, reused while G's weights are unchanged: {raw: (weights_version, module)}
        self.weights_version = 0  # bumped whenever G's (or the EMA's) weights change
        self._inference: dict[bool, tuple[int, torch.nn.Module]] = {}

    # --- state -------------------------------------------------------------------------------
    def _modules(self) -> dict:
        mods = {"G": self.G, "D": self.D}
        if self.ema:
            mods["G_ema"] = self.ema.model
        return mods

    def save_checkpoint(self) -> None:
        """Rank 0 writes; the rest of the state is alike on every rank but the global RNGs, gathered here."""
        self.checkpointed_step = self.step
        rank_rngs = self.dist.rng_states() if self.dist.enabled else None  # a collective: every rank calls it
        if self.dist.is_main:
            checkpoint.save(
                self.run_dir,
                self.step,
                self.epoch,
                self.position,
                self.order,
                self._modules(),
                {"opt_g": self.opt_g, "opt_d": self.opt_d},
                self.data_rng,
                rank_rngs=rank_rngs,
            )

    def resume(self) -> None:
        st = checkpoint.load(
            checkpoint.latest(self.run_dir),
            self._modules(),
            {"opt_g": self.opt_g, "opt_d": self.opt_d},
            self.data_rng,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.step, self.epoch, self.position, self.order = st["step"], st["epoch"], st["position"], st["order"]
        self.weights_version += 1
        self.checkpointed_step = self.step
        # drop metrics logged after the checkpoint: they will be logged again
        metrics = self.run_dir / rundir.METRICS
        if self.dist.is_main and metrics.exists():
            keep = [line for line in metrics.read_text().splitlines() if json.loads(line).get("step", 0) <= self.step]
            metrics.write_text("".join(line + "\n" for line in keep))
            evals = [r for r in map(json.loads, keep) if "eval" in r]
            if evals:  # the monitor's state, as it was at the checkpoint
                self.top_classes = max(r["eval"]["classes"] for r in evals)
                best = min(evals, key=lambda r: r["eval"]["fd"])  # the earliest of equals, as `<` keeps
                self.best, self.last_eval_step = (best["eval"]["fd"], best["step"]), evals[-1]["step"]

    def init_from(self, source: Path) -> dict:
        """A fine-tune: weights and Adam moments from `source`'s latest checkpoint; this run keeps its own step
        count (0), schedule, data order and RNG streams; the EMA's warm-up restarts with the step count (it
        follows the raw weights closely for the first ~100 steps). Returns {"run", "checkpoint", "step", "sha256"}."""
        stem = checkpoint.latest(source)
        meta = checkpoint.load_networks(stem, self._modules(), {"opt_g": self.opt_g, "opt_d": self.opt_d})
        self.weights_version += 1
        return {"run": str(source), "checkpoint": str(stem), "step": meta["step"], "sha256": meta["weights_sha256"]}

    def inference_generator(self, raw: bool = False) -> torch.nn.Module:
        """A generator ready for inference: a copy of the EMA's weights (raw: G's) with BatchNorm statistics
        recomputed for them; the same copy while the weights have not changed since. Touches no training RNG."""
        raw = raw or not self.ema
        version, g = self._inference.get(raw, (None, None))
        if version == self.weights_version:
            return g
        if g is None:
            with torch.random.fork_rng(devices=[]):  # building draws initial weights from the global RNG
                g = build_generator(self.g_cfg).to(self.device)
        g.load_state_dict((self.G if raw else self.ema.model).state_dict())
        with self.clock.timing("recompute"):
            recompute_batchnorm(g, self.cfg.nz, self.device, batches=BN_BATCHES)
        self._inference[raw] = (self.weights_version, g)
        return g

    def save_generators(self) -> None:
        """generator.* holds the EMA weights when EMA is on (raw ones in generator_raw.*), else the raw ones.

        Where coverage checks ran, generator.* already holds the best evaluated one; the last goes to
        generator_last.*.
        """
        main = GENERATOR_LAST if self.best else rundir.GENERATOR
        stems = {main: False, rundir.GENERATOR_RAW: True} if self.ema else {main: True}
        for stem, raw in stems.items():
            rundir.save_generator(self.run_dir, self.g_cfg, self.inference_generator(raw), stem=stem, step=self.step, ema=not raw)

    def save_samples(self, name: str) -> None:
        with torch.no_grad():
            save_grid(self.run_dir / rundir.SAMPLES / f"{name}.png", self.inference_generator()(self.fixed_noise))

    # --- collapse detector and best generator (training/evaluate.py) ----------------------------
    def _coverage_checks_apply(self) -> bool:
        """The classifier knows the bundled MNIST digits only."""
        cfg = self.cfg
        return bool(cfg.eval_every) and cfg.data == "mnist" and cfg.data_format in ("auto", "mnist") and self.g_cfg.channels == 1

    def evaluate(self, log) -> None:
        """Coverage figures of the EMA (and raw) generator into metrics.jsonl; generator.* keeps the best FD."""
        # evaluation must not move the training trajectory: it runs on a forked global RNG (building
        # the classifier and generator copies draws initial weights from it)
        with torch.random.fork_rng(devices=[self.device] if self.cuda else []):
            if self.monitor is None:
                try:
                    self.monitor = CoverageMonitor(self.cfg.nz, self.device)
                except UserError as e:  # no classifier artifact: train on without the checks
                    tqdm.write(f"note: coverage checks off: {e}", file=sys.stderr)
                    self.checks = False
                    return
            g = self.inference_generator()
            row = {"step": self.step, "epoch": self.epoch, "eval": self.monitor.figures(g)}
            if self.ema:
                row["eval_raw"] = self.monitor.figures(self.inference_generator(raw=True))
        f = row["eval"]
        if f["classes"] < self.top_classes:
            row["collapse_warning"] = True
            tqdm.write(
                f"warning: step {self.step}: the generator covers {f['classes']}/10 digit classes, down from "
                f"{self.top_classes} (class KL {f['class_kl']}); it may be collapsing, see "
                f"{self.run_dir / rundir.SAMPLES}",
                file=sys.stderr,
            )
        self.top_classes = max(self.top_classes, f["classes"])
        if self.best is None or f["fd"] < self.best[0]:
            self.best = (f["fd"], self.step)
            rundir.save_generator(
                self.run_dir,
                self.g_cfg,
                g,
                step=self.step,
                ema=self.ema is not None,
                selected_by={"fd": f["fd"], "fd_over_floor": f["fd_over_floor"], "samples": self.monitor.samples},
            )
        row["best"] = {"fd": self.best[0], "step": self.best[1]}
        self.last_eval_step = self.step
        log.write(json.dumps(row) + "\n")
        log.flush()

    # --- one step ----------------------------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        """This rank's slice of the step's global batch, in the epoch order shared by all ranks."""
        b, n = self.cfg.batch_size, self.global_batch
        if self.position + n > len(self.order):  # new epoch: fresh order
            self.epoch += 1
            self.position = 0
            self.order = torch.randperm(len(self.data), generator=self.data_rng)
        start = self.position + self.dist.rank * b
        idx = self.order[start : start + b]
        self.position += n
        return to_unit_range(self.images[idx.to(self.device)])

    def next_latents(self) -> torch.Tensor:
        """This rank's slice of latents drawn for the whole global batch: (batch_size, nz)."""
        b, r = self.cfg.batch_size, self.dist.rank
        z = torch.randn(self.global_batch, self.cfg.nz, generator=self.data_rng)  # (global batch, nz)
        return z[r * b : (r + 1) * b].to(self.device)

    def train_step(self) -> dict:
        cfg = self.cfg
        self.lr = cfg.lr * lr_factor(self.step, cfg.lr_decay_start, self.total_steps)
        for group in (*self.opt_g.param_groups, *self.opt_d.param_groups):
            group["lr"] = self.lr  # also what unrolling's copy of D's update uses
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and cfg.amp)
        for _ in range(self.objective.d_steps):
            real = self.next_batch()
            z = self.next_latents()
            with autocast:
                fake = self.G_train(z)
                # (1) Update D: maximise log D(x) + log(1 - D(G(z)))
                d = self.objective.discriminator_loss(self.D_train, real, fake.detach())
            self.opt_d.zero_grad(set_to_none=True)
            d.loss.backward()
            self.opt_d.step()
        # (2) Update G: maximise log D(G(z)); D's weights need no gradient here, so D runs unwrapped
        # (through DDP, a backward that gives D no gradients would leave its reducer waiting)
        self.D.requires_grad_(False)
        with autocast:
            loss_g = self.objective.generator_loss(self.D, fake, real)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        self.step += 1
        self.weights_version += 1
        if self.ema:
            self.ema.update(self.G, self.step)
        stats = {"loss_d": d.loss.detach(), "loss_g": loss_g.detach(), "d_x": d.d_x, "d_g_z": d.d_g_z}
        if d.grad_real is not None:
            stats["grad_real"] = d.grad_real  # with --r1: mean ||grad_x D(x)||^2 of the last D step
        return stats

    # --- the loop ----------------------------------------------------------------------------
    def replica_row(self, stats: dict) -> tuple[dict, dict]:
        """Under torchrun: the losses averaged over ranks, and every rank's weight checksum (all equal, or
        the run stops: diverged replicas mean the ranks no longer train one model). A collective."""
        stats = self.dist.mean(stats)
        sums = [int(c) for c in self.dist.gather(replica_checksum([self.G, self.D]).reshape(1))]
        if len(set(sums)) > 1:
            raise RuntimeError(f"step {self.step}: the ranks' weights differ (checksums {sums}); DDP replicas out of sync")
        return stats, {"replica_checksums": sums}

    def eta_s(self) -> float:
        """Seconds to the end of the run, sample grids, checkpoints, evaluations and final saves included."""
        cfg, step, total = self.cfg, self.step, self.total_steps
        due = lambda every: total // every - step // every if every else 0  # noqa: E731  # multiples of every in (step, total]
        return self.clock.eta_s(
            steps_left=total - step,
            grids_left=self.grids.expected_left(step, total, self.clock) + 1,  # and the final grid
            checkpoints_left=due(cfg.checkpoint_every) + (total % cfg.checkpoint_every != 0),  # and the final one
            evals_left=due(cfg.eval_every) if self.checks else 0,
            final_recomputes=1 if self.ema else 0,  # the raw generator's; the final grid recomputes the EMA's
        )

    def fit(self, progress: bool = True) -> int:
        """Train to total_steps. Returns the signal number that stopped it, or 0.

        Under torchrun every rank runs this loop in lockstep: the collectives (DDP's gradient averaging,
        the stop check, the log's averages and checksums, the checkpoint's RNG gathering) come at the
        same steps on every rank; rank 0 alone writes files, draws sample grids and evaluates.
        """
        cfg, main, clock = self.cfg, self.dist.is_main, self.clock
        metrics = self.run_dir / rundir.METRICS
        bar = ProgressBar(
            total=self.total_steps,
            initial=self.step,
            disable=not (progress and main),
            unit="step",
            dynamic_ncols=True,
            bar_format=ProgressBar.FORMAT,
        )
        t0, n0 = time.perf_counter(), self.step
        # a signal seen by any rank stops every rank after the same step
        with StopFlag() as stop, open(metrics, "a") if main else contextlib.nullcontext() as log:
            while self.step < self.total_steps and not self.dist.max(stop.signum):
                with clock.timing("train"):
                    stats = self.train_step()
                epoch_done = self.position + self.global_batch > len(self.order)  # the next batch starts an epoch
                if main and self.grids.due(self.step, epoch_done, clock):
                    with clock.timing("sample"):
                        self.save_samples(f"step-{self.step:08d}")
                    self.grids.drawn(clock)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    extra = {}
                    if self.dist.enabled:
                        stats, extra = self.replica_row(stats)
                    dt = time.perf_counter() - t0
                    row = {k: round(float(v), 5) for k, v in stats.items()}
                    row.update(
                        step=self.step,
                        epoch=self.epoch,
                        lr=float(f"{self.lr:.6g}"),
                        images_per_s=round((self.step - n0) * self.global_batch / dt, 1),
                        **extra,
                    )
                    if main:
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    bar.set_postfix(D=row["loss_d"], G=row["loss_g"], Dx=row["d_x"], DGz=row["d_g_z"], img_s=row["images_per_s"])
                    t0, n0 = time.perf_counter(), self.step
                if main and self.checks and self.step % cfg.eval_every == 0:
                    with clock.timing("eval"):
                        self.evaluate(log)
                if self.step % cfg.checkpoint_every == 0:
                    with clock.timing("checkpoint"):
                        self.save_checkpoint()
                bar.eta_s = self.eta_s()
                bar.update(1)
            bar.close()
            with clock.timing("final"):
                if main and self.checks and self.best and self.last_eval_step != self.step:  # the last generator competes too
                    self.evaluate(log)
                if self.checkpointed_step != self.step:
                    self.save_checkpoint()
                if main:
                    self.save_generators()
                    self.save_samples("final")  # the EMA generator save_generators just recomputed
                    save_loss_curve(metrics, self.run_dir / "loss.png")
            return self.dist.max(stop.signum)

    def write_config(self, extra: dict) -> None:
        atomic_write_json(self.run_dir / rundir.CONFIG, {**self.cfg.to_dict(), **extra})
