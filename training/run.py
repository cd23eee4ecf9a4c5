"""`python -m training.run`: train the article's DCGAN and write a run dir.

Examples:
  python -m training.run                                  # bundled MNIST digits, 20 epochs, runs/<time>
  python -m training.run --steps 3000 --out runs/mnist    # bounded by steps
  python -m training.run --data ./faces --image-size 64   # a folder of PNG/JPEG images
  python -m training.run --config my.yaml --seed 3        # a JSON/YAML config; flags override it
  python -m training.run --resume runs/mnist --steps 6000 # continue a run (same weights as never stopping)
  python -m training.run --init-from runs/mnist --augment color,translation,cutout --steps 4000 \
      --lr-decay-start 2000 --out runs/mnist-ft          # a fine-tune: new settings and schedule, its weights
  python -m training.run --dry-run                        # one real iteration end to end (smoke test)

Several GPUs (DistributedDataParallel; --batch-size is per process, the global batch N x it):
  torchrun --nproc-per-node 4 -m training.run --image-size 64 --out runs/ddp4
  torchrun --nproc-per-node 4 -m training.run --resume runs/ddp4 --steps 20000   # same N to resume
  torchrun --nproc-per-node 2 -m training.run --device cpu --steps 100        # CPU processes (gloo)
Several machines: the same command on each, with torchrun's rendezvous options, e.g. 2 nodes x 8 GPUs:
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \\
      --rdzv-id dcgan1 -m training.run --data /shared/faces --image-size 64 --out /shared/runs/big
  (--data on every node; rank 0 writes the run dir; --resume reads it on every node: share it)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path

from training import checkpoint, rundir
from training.config import TrainConfig, read_config_file
from training.data import DATA_FORMATS
from training.errors import OneLineErrorParser, UserError, cli_main
from training.fileio import read_json
from training.models import DISCRIMINATOR_NORMS, GENERATOR_ARCHS
from training.objectives import COMBINATIONS_HELP, LOSS_DEFAULTS, LOSSES

# settings that may change when resuming: bookkeeping, and the schedule of the steps still to come
# (their number, a learning-rate decay), as long as the steps already taken keep theirs
RESUMABLE = {"steps", "epochs", "lr_decay_start", "log_every", "checkpoint_every", "sample_every", "eval_every"}

HELP = {
    "data": "'mnist' (the 5,000 bundled digits, no download) or a path: a folder of PNG/JPEG images "
            "(recursive), an MNIST IDX images file or folder, or a CIFAR-10 python batches folder",
    "data_format": "how to read --data; auto tells by the path",
    "image_size": "output side in pixels: 32, 64 or 128 (a power of two)",
    "channels": "1 (grayscale) or 3 (RGB); 0 = from the data",
    "arch": "generator: 'upsample' (the article: Upsample + Conv3x3) or 'convtranspose' (the paper)",
    "nz": "latent vector size",
    "ngf": "generator width (channels of its last stage)",
    "ndf": "discriminator width (channels of its first block)",
    "components": "latent components: the first K of the --nz latent coordinates become a one-hot of their argmax, "
                  "so the generator sees K disconnected Gaussians instead of one (a mixture prior); the served "
                  "latents stay N(0, I). 0 = off (the article's)",
    "dropout": "discriminator dropout probability (wgan-gp default: 0)",
    "d_norm": "discriminator normalisation after each block but the first (wgan-gp default: layernorm)",
    "loss": "nonsaturating (Goodfellow et al. 2014, the article's) or wgan-gp (Gulrajani et al. 2017: critic, "
            "gradient penalty 10, 5 critic steps per G step; its defaults: --lr 1e-4 --beta1 0.5 --beta2 0.9 "
            "--d-norm layernorm --dropout 0, each applied only where not set). " + COMBINATIONS_HELP,
    "unroll": "Unrolled GAN (Metz et al. 2016): G's loss through K differentiable Adam steps of a copy of D; "
              "0 = off; nonsaturating only. Each G step costs about K+1 D steps with double backward",
    "r1": "R1 penalty (Mescheder et al. 2018): D's loss adds GAMMA/2 times the mean squared norm of its gradient at "
          "the real images, which keeps D from growing steep around a small dataset's digits; 0 = off (the article's). "
          "nonsaturating loss only, not with --unroll. Costs a double backward through D each D step; metrics.jsonl "
          "logs that squared norm as grad_real",
    "augment": "DiffAugment (Zhao et al. 2020) of every batch the discriminator sees, real and generated, in the D "
               "and G steps: a comma-separated list of color, translation, cutout (the paper's policy for little data: "
               "color,translation,cutout); '' = none. Meant for a discriminator that memorises a small dataset; at "
               "this fixed strength it slowed learning on the bundled digits (README: 'DiffAugment against a "
               "memorising discriminator')",
    "init_from": "a run dir: start this new run from its latest checkpoint (G, D and EMA weights, Adam moments) "
                 "instead of fresh weights, with this run's own steps, schedule, data order and settings (e.g. "
                 "--augment, --lr); the networks' shapes must match. Its commands head this run's config.json",
    "batch_size": "images per step, per process: under torchrun each of the N processes trains on its own "
                  "--batch-size images, so a step's global batch is N x --batch-size",
    "lr": "Adam learning rate (both networks)",
    "beta1": "Adam beta1",
    "beta2": "Adam beta2",
    "steps": "generator updates to train for; 0 = use --epochs",
    "epochs": "passes over the data (when --steps is 0)",
    "lr_decay_start": "step from which both learning rates fall linearly to 0 at the last step; 0 = constant. "
                      "May be set on --resume from a step not yet trained, e.g. --resume RUN --steps 16000 "
                      "--lr-decay-start 11000 to finish a run with a decay; a decay under way keeps it and --steps",
    "ema": "keep an exponential moving average of G's weights; generator.safetensors holds it",
    "ema_decay": "EMA decay per step",
    "seed": "seeds weights, data order, latents and dropout: same seed, same run",
    "log_every": "steps between metrics.jsonl lines",
    "checkpoint_every": "steps between checkpoints (one is also written at the end and on Ctrl-C/SIGTERM)",
    "sample_every": "steps between sample grids in samples/; 0 = one per epoch",
    "eval_every": "steps between checks with the MNIST classifier (bundled MNIST only; 0 = off): class coverage, "
                  "class KL, classifier score, Frechet distance go to metrics.jsonl, a warning is printed when "
                  "coverage drops, and generator.* keeps the EMA generator with the best Frechet distance",
    "device": "auto (CUDA when present), cpu or cuda",
    "amp": "bfloat16 autocast on CUDA (CPU always runs float32)",
    "sync_bn": "under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm; two all-reduces "
               "per BatchNorm layer and forward). Off: each process normalises over its own --batch-size images, as a "
               "single process at that batch does (and cheaper); consider it when that batch is small, where per-process "
               "statistics get noisy. "
               "No effect in a single process",
}
METAVARS = {"r1": "GAMMA", "unroll": "K", "components": "K"}
CHOICES = {"data_format": DATA_FORMATS, "arch": GENERATOR_ARCHS, "loss": LOSSES, "d_norm": DISCRIMINATOR_NORMS,
           "device": ("auto", "cpu", "cuda")}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m training.run",
        description="Train the article's DCGAN (Radford et al. 2015) and write a run dir: config.json, "
                    "generator.json + generator.safetensors, checkpoints/, samples/*.png, metrics.jsonl, loss.png.",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="JSON or YAML file of settings (names as the flags); flags override it")
    p.add_argument("--out", metavar="DIR", help="run dir to create (default: runs/<date>-<time>); must not hold a run")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--dry-run", action="store_true", help="one real iteration end to end, then exit (a smoke test)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_ = f"{HELP[f.name]} (default: {default})"
        if f.type in (bool, "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=CHOICES.get(f.name), help=help_,
                           metavar=None if f.name in CHOICES else METAVARS.get(f.name, f.name.upper()))
    return p


def parse(argv) -> tuple[argparse.Namespace, dict]:
    """Returns (namespace, the TrainConfig settings given explicitly as flags)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    fields = TrainConfig.fields()
    explicit = {k: v for k, v in vars(ns).items() if k in fields}
    return ns, explicit


def new_run_dir(out: str | None) -> Path:
    run_dir = Path(out) if out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if (run_dir / rundir.CONFIG).exists():
        raise UserError(f"{run_dir} already holds a run; pick another --out, or continue it with --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def check_schedule_kept(saved: dict, trainer, done: int) -> None:
    """A resume may reshape the learning-rate schedule of the steps to come, never of those taken: the
    config must keep describing the run (e.g. --steps changed while a decay is under way would not)."""
    from training.loop import lr_factor

    old = (saved.get("lr_decay_start", 0), saved.get("steps") or saved.get("epochs", 0) * trainer.steps_per_epoch)
    new = (trainer.cfg.lr_decay_start, trainer.total_steps)
    schedule = lambda start, total: f"decay from step {start} to {total}" if 0 < start < total else "constant lr"  # noqa: E731
    for i in range(done):
        if lr_factor(i, *old) != lr_factor(i, *new):
            raise UserError(f"--resume at step {done} would change the learning rate of step {i + 1}, already trained "
                            f"({schedule(*old)} -> {schedule(*new)}); a new decay must start at step >= {done}, and a "
                            "decay under way keeps its --lr-decay-start and --steps")


@cli_main
def main(argv=None) -> int:
    ns, explicit = parse(argv)
    from training import distributed  # torch imports after --help has been served
    from training.data import load_dataset
    from training.loop import Trainer, pick_device

    if ns.resume:
        run_dir = Path(ns.resume)
        if not (run_dir / rundir.CONFIG).is_file():
            raise UserError(f"{run_dir} is not a run dir (no {rundir.CONFIG}); pass the folder that training.run printed")
        saved = read_json(run_dir / rundir.CONFIG, "run config")
        changed = {k for k, v in explicit.items() if saved.get(k) != v} - RESUMABLE
        if changed or ns.config:
            raise UserError(f"--resume keeps the run's settings; only {sorted(RESUMABLE)} may change (got {sorted(changed) or '--config'})")
        settings = {k: v for k, v in saved.items() if k in TrainConfig.fields()}
        cfg = TrainConfig.from_dict({**settings, **explicit}, str(run_dir / rundir.CONFIG)).validate()
        command = saved.get("command", [])
    else:
        settings = {**(read_config_file(ns.config) if ns.config else {}), **explicit}
        # the loss's own defaults (e.g. wgan-gp: lr 1e-4, betas (0.5, 0.9)), only where nothing was set
        loss_defaults = {k: v for k, v in LOSS_DEFAULTS.get(settings.get("loss"), {}).items() if k not in settings}
        if loss_defaults and os.environ.get("RANK", "0") == "0":  # under torchrun, said once
            print(f"--loss {settings['loss']} defaults: " + ", ".join(f"{k}={v}" for k, v in loss_defaults.items()))
        cfg = TrainConfig.from_dict({**loss_defaults, **settings}, ns.config or "flags")
        if ns.dry_run:
            cfg.steps = 1
        cfg.validate()
        command = []
        if cfg.init_from:
            source = Path(cfg.init_from)
            if not (source / rundir.CONFIG).is_file():
                raise UserError(f"--init-from {source}: not a run dir (no {rundir.CONFIG}); pass a folder training.run wrote")
            command = read_json(source / rundir.CONFIG, "run config").get("command", [])
    command = command + [shlex.join(["python", "-m", "training.run", *(sys.argv[1:] if argv is None else argv)])]

    # one process, or this process's rank of the job torchrun started (training/distributed.py)
    dist = distributed.setup(pick_device(cfg.device))
    try:
        channels = cfg.channels or (1 if cfg.data == "mnist" or cfg.data_format in ("mnist", "idx") else 3)
        data = load_dataset(cfg.data, cfg.data_format, cfg.image_size, channels)
        if not ns.resume:  # rank 0 creates it; the others learn its name (it holds rank 0's clock time)
            run_dir = Path(dist.broadcast_text(str(new_run_dir(ns.out)) if dist.is_main else None))
        trainer = Trainer(cfg, data, run_dir, dist)
        if ns.resume:
            check_schedule_kept(saved, trainer, checkpoint.step_of(checkpoint.latest(run_dir)))
            trainer.resume()
            init = {"init_checkpoint": saved["init_checkpoint"]} if "init_checkpoint" in saved else {}
        elif cfg.init_from:
            init = {"init_checkpoint": trainer.init_from(Path(cfg.init_from))}
        else:
            init = {}
        if dist.is_main:
            world = {"world_size": dist.world_size} if dist.enabled else {}
            trainer.write_config({"command": command, "data_source": data.source, "data_images": len(data), **init,
                                  **world})
            batch = f"{dist.world_size} processes x {cfg.batch_size}" if dist.enabled else f"{cfg.batch_size}"
            start = (f", resuming at step {trainer.step}" if ns.resume
                     else f", from {init['init_checkpoint']['checkpoint']}" if init else "")
            print(f"run dir: {run_dir}  ({len(data)} images, {trainer.total_steps} steps of {batch}, "
                  f"device {trainer.device}{start})", flush=True)
        signum = trainer.fit(progress=not ns.quiet)
        # rank 0 writes last; a rank that tore the process group down before it got there aborts (gloo)
        dist.barrier()
    finally:
        distributed.close(dist)
    code = 128 + signum if signum else 0
    if dist.is_main and signum:
        launcher = f"torchrun ... ({dist.world_size} processes) -m" if dist.enabled else "python -m"
        print(f"stopped by signal {signum} at step {trainer.step}; checkpoint written. "
              f"Continue with: {launcher} training.run --resume {run_dir}", file=sys.stderr)
    elif dist.is_main:
        print(f"done: {trainer.step} steps. generator: {run_dir / (rundir.GENERATOR + '.safetensors')}  "
              f"samples: {run_dir / rundir.SAMPLES}")
    if dist.enabled:
        distributed.exit_rank(code)  # all written; see exit_rank for why not a normal return
    return code


if __name__ == "__main__":
    raise SystemExit(main())
