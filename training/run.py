"""`python -m training.run`: train the article's DCGAN and write a run dir.

Examples:
  python -m training.run                                  # bundled MNIST digits, 20 epochs, runs/<time>
  python -m training.run --steps 3000 --out runs/mnist    # bounded by steps
  python -m training.run --data ./faces --image-size 64   # a folder of PNG/JPEG images
  python -m training.run --config my.yaml --seed 3        # a JSON/YAML config; flags override it
  python -m training.run --resume runs/mnist --steps 6000 # continue a run (same weights as never stopping)
  python -m training.run --init-from runs/mnist --augment color,translation,cutout --steps 4000 \\
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
import signal
import sys
import time
from pathlib import Path

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import read_json
from training import checkpoint, rundir
from training.config import TrainConfig, flag, read_config_file
from training.objectives import LOSS_DEFAULTS


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
    for f in dataclasses.fields(TrainConfig):  # every setting, as declared in training/config.py
        meta, default = f.metadata, getattr(defaults, f.name)
        help_ = f"{meta['help']} (default: {default}{'; may change on --resume' if meta['resumable'] else ''})"
        if f.type in (bool, "bool"):
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(
                flag(f.name),
                type=kind,
                default=argparse.SUPPRESS,
                choices=meta["choices"],
                help=help_,
                metavar=None if meta["choices"] else meta["metavar"] or f.name.upper(),
            )
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
            raise UserError(
                f"--resume at step {done} would change the learning rate of step {i + 1}, already trained "
                f"({schedule(*old)} -> {schedule(*new)}); a new decay must start at step >= {done}, and a "
                "decay under way keeps its --lr-decay-start and --steps"
            )


def resumed_settings(ns: argparse.Namespace, explicit: dict) -> tuple[TrainConfig, dict]:
    """--resume RUN_DIR: the run's saved settings, with only the resumable ones changed by flags. (cfg, saved config.json)"""
    run_dir = Path(ns.resume)
    if not (run_dir / rundir.CONFIG).is_file():
        raise UserError(f"{run_dir} is not a run dir (no {rundir.CONFIG}); pass the folder that training.run printed")
    saved = read_json(run_dir / rundir.CONFIG, "run config")
    changed = {k for k, v in explicit.items() if saved.get(k) != v} - TrainConfig.resumable()
    if changed or ns.config:
        raise UserError(
            f"--resume keeps the run's settings; only {sorted(TrainConfig.resumable())} may change (got {sorted(changed) or '--config'})"
        )
    settings = {k: v for k, v in saved.items() if k in TrainConfig.fields()}
    return TrainConfig.from_dict({**settings, **explicit}, str(run_dir / rundir.CONFIG)).validate(), saved


def new_settings(ns: argparse.Namespace, explicit: dict) -> TrainConfig:
    """A new run: the --config file, then the flags, then the loss's own defaults where neither set a value."""
    settings = {**(read_config_file(ns.config) if ns.config else {}), **explicit}
    # the loss's own defaults (e.g. wgan-gp: lr 1e-4, betas (0.5, 0.9)), only where nothing was set
    loss_defaults = {k: v for k, v in LOSS_DEFAULTS.get(settings.get("loss"), {}).items() if k not in settings}
    if loss_defaults and os.environ.get("RANK", "0") == "0":  # under torchrun, said once
        print(f"--loss {settings['loss']} defaults: " + ", ".join(f"{k}={v}" for k, v in loss_defaults.items()))
    cfg = TrainConfig.from_dict({**loss_defaults, **settings}, ns.config or "flags")
    if ns.dry_run:
        cfg.steps = 1
    return cfg.validate()


def command_history(ns: argparse.Namespace, cfg: TrainConfig, saved: dict | None, argv) -> list[str]:
    """The command lines that made the run: the resumed run's, or a fine-tune source's, then this one."""
    if saved is not None:
        earlier = saved.get("command", [])
    elif cfg.init_from:
        source = Path(cfg.init_from)
        if not (source / rundir.CONFIG).is_file():
            raise UserError(f"--init-from {source}: not a run dir (no {rundir.CONFIG}); pass a folder training.run wrote")
        earlier = read_json(source / rundir.CONFIG, "run config").get("command", [])
    else:
        earlier = []
    return earlier + [shlex.join(["python", "-m", "training.run", *(sys.argv[1:] if argv is None else argv)])]


def starting_point(trainer, ns: argparse.Namespace, saved: dict | None) -> dict:
    """Load the resumed checkpoint or the fine-tune's source weights into `trainer`; the config.json entry
    naming the checkpoint a fine-tune started from ({} for a fresh run)."""
    if saved is not None:
        check_schedule_kept(saved, trainer, checkpoint.step_of(checkpoint.latest(trainer.run_dir)))
        trainer.resume()
        return {"init_checkpoint": saved["init_checkpoint"]} if "init_checkpoint" in saved else {}
    if trainer.cfg.init_from:
        return {"init_checkpoint": trainer.init_from(Path(trainer.cfg.init_from))}
    return {}


def record_run(trainer, data, dist, ns: argparse.Namespace, saved: dict | None, command: list[str], init: dict) -> None:
    """Rank 0: write config.json and say what is about to run."""
    world = {"world_size": dist.world_size} if dist.enabled else {}
    # the recipe file the settings came from (configs/*.yaml), kept through --resume; export copies it to the manifest
    config_file = saved.get("config_file") if saved is not None else ns.config
    recipe = {"config_file": config_file} if config_file else {}
    trainer.write_config({"command": command, "data_source": data.source, "data_images": len(data), **init, **world, **recipe})
    batch = f"{dist.world_size} processes x {trainer.cfg.batch_size}" if dist.enabled else f"{trainer.cfg.batch_size}"
    start = f", resuming at step {trainer.step}" if ns.resume else f", from {init['init_checkpoint']['checkpoint']}" if init else ""
    print(
        f"run dir: {trainer.run_dir}  ({len(data)} images, {trainer.total_steps} steps of {batch}, device {trainer.device}{start})",
        flush=True,
    )


def report_end(trainer, dist, signum: int) -> None:
    """Rank 0: how to continue a stopped run, or where a finished one went and where its time went."""
    if signum:
        launcher = f"torchrun ... ({dist.world_size} processes) -m" if dist.enabled else "python -m"
        print(
            f"stopped by signal {signum} at step {trainer.step}; checkpoint written. "
            f"Continue with: {launcher} training.run --resume {trainer.run_dir}",
            file=sys.stderr,
        )
    else:
        print(f"done: {trainer.step} steps in {trainer.clock.summary()}")
        print(f"generator: {trainer.run_dir / (rundir.GENERATOR + '.safetensors')}  samples: {trainer.run_dir / rundir.SAMPLES}")


@cli_main
def main(argv=None) -> int:
    ns, explicit = parse(argv)
    # blocked before torch starts any thread (threads inherit the mask); the training loop unblocks them in the
    # main thread alone (training/loop.py: StopFlag), so a stop request never lands on a torch worker
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return train(ns, explicit, argv)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def train(ns: argparse.Namespace, explicit: dict, argv) -> int:
    """Settings, data, trainer, starting point, the loop, the last words; under torchrun this rank's share."""
    from training import distributed  # torch imports after --help has been served
    from training.data import load_dataset
    from training.loop import Trainer, pick_device

    cfg, saved = resumed_settings(ns, explicit) if ns.resume else (new_settings(ns, explicit), None)
    command = command_history(ns, cfg, saved, argv)
    # one process, or this process's rank of the job torchrun started (training/distributed.py)
    dist = distributed.setup(pick_device(cfg.device))
    try:
        channels = cfg.channels or (1 if cfg.data == "mnist" or cfg.data_format in ("mnist", "idx") else 3)
        data = load_dataset(cfg.data, cfg.data_format, cfg.image_size, channels)
        # rank 0 creates a new run dir; the others learn its name (it holds rank 0's clock time)
        run_dir = Path(ns.resume) if ns.resume else Path(dist.broadcast_text(str(new_run_dir(ns.out)) if dist.is_main else None))
        trainer = Trainer(cfg, data, run_dir, dist)
        init = starting_point(trainer, ns, saved)
        if dist.is_main:
            record_run(trainer, data, dist, ns, saved, command, init)
        signum = trainer.fit(progress=not ns.quiet)
        # rank 0 writes last; a rank that tore the process group down before it got there aborts (gloo)
        dist.barrier()
    finally:
        distributed.close(dist)
    if dist.is_main:
        report_end(trainer, dist, signum)
    code = 128 + signum if signum else 0
    if dist.enabled:
        distributed.exit_rank(code)  # all written; see exit_rank for why not a normal return
    return code


if __name__ == "__main__":
    raise SystemExit(main())
