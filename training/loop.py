"""The training loop: one discriminator update, then one generator update, per step."""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from training import checkpoint, rundir
from training.config import TrainConfig
from training.data import Dataset, to_unit_range
from training.ema import EMA, recompute_batchnorm
from training.errors import UserError
from training.evaluate import GENERATOR_LAST, CoverageMonitor
from training.fileio import atomic_write_json
from training.models import Discriminator, DiscriminatorConfig, GeneratorConfig, build_generator, init_weights
from training.objectives import build_objective
from training.plots import save_grid, save_loss_curve


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes the current step, checkpoints and exits."""

    signum: int = 0
    _previous: dict = field(default_factory=dict)

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)


class Trainer:
    def __init__(self, cfg: TrainConfig, data: Dataset, run_dir: Path):
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.device = pick_device(cfg.device)
        channels = data.images.shape[1]
        torch.manual_seed(cfg.seed)  # dropout and anything else on the global RNG
        self.data_rng = torch.Generator().manual_seed(cfg.seed + 1)  # data order and latents
        init_rng = torch.Generator().manual_seed(cfg.seed + 2)

        self.g_cfg = GeneratorConfig(arch=cfg.arch, nz=cfg.nz, image_size=cfg.image_size, channels=channels, ngf=cfg.ngf)
        self.G = build_generator(self.g_cfg)
        self.D = Discriminator(DiscriminatorConfig(image_size=cfg.image_size, channels=channels, ndf=cfg.ndf,
                                                   dropout=cfg.dropout, norm=cfg.d_norm))
        init_weights(self.G, init_rng)
        init_weights(self.D, init_rng)
        self.cuda = self.device.type == "cuda"
        memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        self.G.to(self.device, memory_format=memory_format)
        self.D.to(self.device, memory_format=memory_format)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas)
        self.objective = build_objective(cfg.loss, cfg.unroll, self.opt_d)  # unrolling replays opt_d's update
        self.ema = EMA(self.G, cfg.ema_decay) if cfg.ema else None
        # 64 fixed latents: sample grids are comparable across epochs
        self.fixed_noise = torch.randn(64, cfg.nz, generator=torch.Generator().manual_seed(cfg.seed + 3)).to(self.device)
        self.images = data.images.to(self.device)
        self.steps_per_epoch = len(data) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"the data has {len(data)} images, fewer than one batch of {cfg.batch_size}; lower --batch-size")
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        self.step, self.epoch, self.position = 0, 0, 0
        self.order = torch.randperm(len(data), generator=self.data_rng)
        # collapse detector: coverage figures every eval_every steps; generator.* keeps the best
        self.checks = self._coverage_checks_apply()
        self.monitor: CoverageMonitor | None = None  # built at the first check (loads the classifier)
        self.best = None  # (Frechet distance, step) of the generator in generator.*, once evaluated
        self.top_classes = 0  # most classes covered so far; a drop below it prints a warning
        self.last_eval_step = -1

    # --- state -------------------------------------------------------------------------------
    def _modules(self) -> dict:
        mods = {"G": self.G, "D": self.D}
        if self.ema:
            mods["G_ema"] = self.ema.model
        return mods

    def save_checkpoint(self) -> None:
        checkpoint.save(self.run_dir, self.step, self.epoch, self.position, self.order, self._modules(),
                        {"opt_g": self.opt_g, "opt_d": self.opt_d}, self.data_rng)

    def resume(self) -> None:
        st = checkpoint.load(checkpoint.latest(self.run_dir), self._modules(),
                             {"opt_g": self.opt_g, "opt_d": self.opt_d}, self.data_rng)
        self.step, self.epoch, self.position, self.order = st["step"], st["epoch"], st["position"], st["order"]
        # drop metrics logged after the checkpoint: they will be logged again
        metrics = self.run_dir / rundir.METRICS
        if metrics.exists():
            keep = [line for line in metrics.read_text().splitlines() if json.loads(line).get("step", 0) <= self.step]
            metrics.write_text("".join(line + "\n" for line in keep))
            evals = [r for r in map(json.loads, keep) if "eval" in r]
            if evals:  # the monitor's state, as it was at the checkpoint
                self.top_classes = max(r["eval"]["classes"] for r in evals)
                best = min(evals, key=lambda r: r["eval"]["fd"])  # the earliest of equals, as `<` keeps
                self.best, self.last_eval_step = (best["eval"]["fd"], best["step"]), evals[-1]["step"]

    def inference_generator(self, raw: bool = False) -> torch.nn.Module:
        """A generator ready for inference: a copy with BatchNorm statistics recomputed for its own weights."""
        source = self.G if raw or not self.ema else self.ema.model
        g = build_generator(self.g_cfg).to(self.device)
        g.load_state_dict(source.state_dict())
        return recompute_batchnorm(g, self.cfg.nz, self.device)

    def save_generators(self) -> None:
        """generator.* holds the EMA weights when EMA is on (raw ones in generator_raw.*), else the raw ones.

        Where coverage checks ran, generator.* already holds the best evaluated one; the last goes to
        generator_last.*.
        """
        main = GENERATOR_LAST if self.best else rundir.GENERATOR
        stems = {main: False, rundir.GENERATOR_RAW: True} if self.ema else {main: True}
        for stem, raw in stems.items():
            rundir.save_generator(self.run_dir, self.g_cfg, self.inference_generator(raw).cpu(), stem=stem,
                                  step=self.step, ema=not raw)

    def save_samples(self, name: str) -> None:
        with torch.no_grad():
            save_grid(self.run_dir / rundir.SAMPLES / f"{name}.png", self.inference_generator()(self.fixed_noise))

    # --- collapse detector and best generator (training/evaluate.py) ----------------------------
    def _coverage_checks_apply(self) -> bool:
        """The classifier knows the bundled MNIST digits only."""
        cfg = self.cfg
        return bool(cfg.eval_every) and cfg.data == "mnist" and cfg.data_format in ("auto", "mnist") \
            and self.g_cfg.channels == 1

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
            tqdm.write(f"warning: step {self.step}: the generator covers {f['classes']}/10 digit classes, down from "
                       f"{self.top_classes} (class KL {f['class_kl']}); it may be collapsing, see "
                       f"{self.run_dir / rundir.SAMPLES}", file=sys.stderr)
        self.top_classes = max(self.top_classes, f["classes"])
        if self.best is None or f["fd"] < self.best[0]:
            self.best = (f["fd"], self.step)
            rundir.save_generator(self.run_dir, self.g_cfg, g.cpu(), step=self.step, ema=self.ema is not None,
                                  selected_by={"fd": f["fd"], "fd_over_floor": f["fd_over_floor"],
                                               "samples": self.monitor.samples})
        row["best"] = {"fd": self.best[0], "step": self.best[1]}
        self.last_eval_step = self.step
        log.write(json.dumps(row) + "\n")
        log.flush()

    # --- one step ----------------------------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        b = self.cfg.batch_size
        if self.position + b > len(self.order):  # new epoch: fresh order
            self.epoch += 1
            self.position = 0
            self.order = torch.randperm(len(self.data), generator=self.data_rng)
        idx = self.order[self.position:self.position + b]
        self.position += b
        return to_unit_range(self.images[idx.to(self.device)])

    def train_step(self) -> dict:
        cfg = self.cfg
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and cfg.amp)
        for _ in range(self.objective.d_steps):
            real = self.next_batch()
            z = torch.randn(cfg.batch_size, cfg.nz, generator=self.data_rng).to(self.device)
            with autocast:
                fake = self.G(z)
                # (1) Update D: maximise log D(x) + log(1 - D(G(z)))
                d = self.objective.discriminator_loss(self.D, real, fake.detach())
            self.opt_d.zero_grad(set_to_none=True)
            d.loss.backward()
            self.opt_d.step()
        # (2) Update G: maximise log D(G(z)); D's weights need no gradient here
        self.D.requires_grad_(False)
        with autocast:
            loss_g = self.objective.generator_loss(self.D, fake, real)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        self.step += 1
        if self.ema:
            self.ema.update(self.G, self.step)
        return {"loss_d": d.loss.detach(), "loss_g": loss_g.detach(), "d_x": d.d_x, "d_g_z": d.d_g_z}

    # --- the loop ----------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> int:
        """Train to total_steps. Returns the signal number that stopped it, or 0."""
        cfg = self.cfg
        metrics = self.run_dir / rundir.METRICS
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        t0, n0 = time.perf_counter(), self.step
        with StopFlag() as stop, open(metrics, "a") as log:
            while self.step < self.total_steps and not stop.signum:
                stats = self.train_step()
                epoch_done = self.position + cfg.batch_size > len(self.order)  # the next batch starts an epoch
                if epoch_done and not cfg.sample_every:
                    self.save_samples(f"epoch-{self.epoch + 1:04d}")
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.save_samples(f"step-{self.step:08d}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    dt = time.perf_counter() - t0
                    row = {k: round(float(v), 5) for k, v in stats.items()}
                    row.update(step=self.step, epoch=self.epoch, images_per_s=round((self.step - n0) * cfg.batch_size / dt, 1))
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix(D=row["loss_d"], G=row["loss_g"], Dx=row["d_x"], DGz=row["d_g_z"],
                                    img_s=row["images_per_s"])
                    t0, n0 = time.perf_counter(), self.step
                bar.update(1)
                if self.checks and self.step % cfg.eval_every == 0:
                    self.evaluate(log)
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            bar.close()
            if self.checks and self.best and self.last_eval_step != self.step:  # the last generator competes too
                self.evaluate(log)
            self.save_checkpoint()
            self.save_generators()
            self.save_samples("final")
            save_loss_curve(metrics, self.run_dir / "loss.png")
            return stop.signum

    def write_config(self, extra: dict) -> None:
        atomic_write_json(self.run_dir / rundir.CONFIG, {**self.cfg.to_dict(), **extra})
