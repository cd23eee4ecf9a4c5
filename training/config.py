"""TrainConfig: every hyperparameter of a run, saved as the run dir's config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from common.cli import UserError
from training.augment import parse_policy
from training.data import DATA_FORMATS
from training.models import DISCRIMINATOR_NORMS, GENERATOR_ARCHS
from training.objectives import COMBINATIONS_HELP, LOSSES, check_combination

DEVICES = ("auto", "cpu", "cuda")


def setting(
    default,
    help: str,
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    above: float | None = None,
    metavar: str | None = None,
    resumable: bool = False,
):
    """One training setting, declared once: its default, its --help text, the checks on its value, and
    whether --resume may change it. `python -m training.run` builds its flags from these, and
    TrainConfig.validate() applies the checks; cross-setting rules stay in validate().

    choices: the allowed values; minimum / above: value >= minimum / value > above;
    resumable: bookkeeping or the schedule of steps still to come, which --resume may change.
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "above": above, "metavar": metavar, "resumable": resumable}
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    # data
    data: str = setting(
        "mnist",
        (
            "'mnist' (the 5,000 bundled digits, no download) or a path: a folder of PNG/JPEG images (recursive), "
            "an MNIST IDX images file or folder, or a CIFAR-10 python batches folder"
        ),
    )
    data_format: str = setting(
        "auto",
        "how to read --data; auto tells by the path",
        choices=DATA_FORMATS,
    )
    image_size: int = setting(
        32,
        "output side in pixels: 32, 64 or 128 (a power of two)",
        above=0,
    )
    channels: int = setting(
        0,
        "1 (grayscale) or 3 (RGB); 0 = from the data",
        choices=(0, 1, 3),
    )
    # networks (the article's DCGAN)
    arch: str = setting(
        "upsample",
        "generator: 'upsample' (the article: Upsample + Conv3x3) or 'convtranspose' (the paper)",
        choices=GENERATOR_ARCHS,
    )
    nz: int = setting(
        100,
        "latent vector size",
        above=0,
    )
    ngf: int = setting(
        64,
        "generator width (channels of its last stage)",
        above=0,
    )
    ndf: int = setting(
        64,
        "discriminator width (channels of its first block)",
        above=0,
    )
    components: int = setting(
        0,
        (
            "latent components: the first K of the --nz latent coordinates become a one-hot of their argmax, so "
            "the generator sees K disconnected Gaussians instead of one (a mixture prior); the served latents "
            "stay N(0, I). 0 = off (the article's)"
        ),
        metavar="K",
    )
    dropout: float = setting(
        0.25,
        "discriminator dropout probability (wgan-gp default: 0)",
        minimum=0,
    )
    d_norm: str = setting(
        "batchnorm",
        "discriminator normalisation after each block but the first (wgan-gp default: layernorm)",
        choices=DISCRIMINATOR_NORMS,
    )
    # objective (Goodfellow et al. 2014's non-saturating loss: G maximises log D(G(z))); see objectives.py
    loss: str = setting(
        "nonsaturating",
        (
            "nonsaturating (Goodfellow et al. 2014, the article's) or wgan-gp (Gulrajani et al. 2017: critic, "
            "gradient penalty 10, 5 critic steps per G step; its defaults: --lr 1e-4 --beta1 0.5 --beta2 0.9 "
            "--d-norm layernorm --dropout 0, each applied only where not set). " + COMBINATIONS_HELP
        ),
        choices=LOSSES,
    )
    unroll: int = setting(
        0,
        (
            "Unrolled GAN (Metz et al. 2016): G's loss through K differentiable Adam steps of a copy of D; 0 = "
            "off; nonsaturating only. Each G step costs about K+1 D steps with double backward"
        ),
        minimum=0,
        metavar="K",
    )
    r1: float = setting(
        0.0,
        (
            "R1 penalty (Mescheder et al. 2018): D's loss adds GAMMA/2 times the mean squared norm of its "
            "gradient at the real images, which keeps D from growing steep around a small dataset's digits; 0 = "
            "off (the article's). nonsaturating loss only, not with --unroll. Costs a double backward through D "
            "each D step; metrics.jsonl logs that squared norm as grad_real"
        ),
        metavar="GAMMA",
    )
    augment: str = setting(
        "",
        (
            "DiffAugment (Zhao et al. 2020) of every batch the discriminator sees, real and generated, in the D "
            "and G steps: a comma-separated list of color, translation, cutout (the paper's policy for little "
            "data: color,translation,cutout); '' = none. Meant for a discriminator that memorises a small "
            "dataset; at this fixed strength it slowed learning on the bundled digits (README: 'DiffAugment "
            "against a memorising discriminator')"
        ),
    )
    # optimisation (Radford et al. 2015: Adam lr 2e-4, betas (0.5, 0.999))
    batch_size: int = setting(
        64,
        (
            "images per step, per process: under torchrun each of the N processes trains on its own --batch-size "
            "images, so a step's global batch is N x --batch-size"
        ),
        above=0,
    )
    lr: float = setting(
        2e-4,
        "Adam learning rate (both networks)",
        above=0,
    )
    beta1: float = setting(
        0.5,
        "Adam beta1",
    )
    beta2: float = setting(
        0.999,
        "Adam beta2",
    )
    steps: int = setting(
        0,
        "generator updates to train for; 0 = use --epochs",
        minimum=0,
        resumable=True,
    )
    epochs: int = setting(
        20,
        "passes over the data (when --steps is 0)",
        minimum=0,
        resumable=True,
    )
    lr_decay_start: int = setting(
        0,
        (
            "step from which both learning rates fall linearly to 0 at the last step; 0 = constant. May be set on"
            " --resume from a step not yet trained, e.g. --resume RUN --steps 16000 --lr-decay-start 11000 to "
            "finish a run with a decay; a decay under way keeps it and --steps"
        ),
        minimum=0,
        resumable=True,
    )
    # a fine-tune: start from another run's latest checkpoint (G, D, EMA weights, Adam moments), not from init
    init_from: str = setting(
        "",
        (
            "a run dir: start this new run from its latest checkpoint (G, D and EMA weights, Adam moments) "
            "instead of fresh weights, with this run's own steps, schedule, data order and settings (e.g. "
            "--augment, --lr); the networks' shapes must match. Its commands head this run's config.json"
        ),
    )
    # generator weight averaging; BatchNorm statistics are recomputed for the averaged weights
    ema: bool = setting(
        True,
        "keep an exponential moving average of G's weights; generator.safetensors holds it",
    )
    ema_decay: float = setting(
        0.999,
        "EMA decay per step",
    )
    # bookkeeping
    seed: int = setting(
        0,
        "seeds weights, data order, latents and dropout: same seed, same run",
    )
    log_every: int = setting(
        10,
        "steps between metrics.jsonl lines",
        above=0,
        resumable=True,
    )
    checkpoint_every: int = setting(
        500,
        "steps between checkpoints (one is also written at the end and on Ctrl-C/SIGTERM)",
        above=0,
        resumable=True,
    )
    sample_every: int = setting(
        0,
        (
            "steps between sample grids (samples/step-N.png); 0 = on a time budget: the first after the first "
            "epoch or 30 s of training, then as often as keeps grids within 2%% of the training time, at most one "
            "a minute"
        ),
        minimum=0,
        resumable=True,
    )
    eval_every: int = setting(
        500,
        (
            "steps between checks with the MNIST classifier (bundled MNIST only; 0 = off): class coverage, class "
            "KL, classifier score, Frechet distance go to metrics.jsonl, a warning is printed when coverage "
            "drops, and generator.* keeps the EMA generator with the best Frechet distance"
        ),
        minimum=0,
        resumable=True,
    )
    device: str = setting(
        "auto",
        "auto (CUDA when present), cpu or cuda",
        choices=DEVICES,
    )
    amp: bool = setting(
        True,
        "bfloat16 autocast on CUDA (CPU always runs float32)",
    )
    # under torchrun: BatchNorm over the global batch (SyncBatchNorm, CUDA only) instead of per process;
    # off: each process normalises over its --batch-size images, as one process at that batch does
    sync_bn: bool = setting(
        False,
        (
            "under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm; two all-reduces "
            "per BatchNorm layer and forward). Off: each process normalises over its own --batch-size images, as "
            "a single process at that batch does (and cheaper); consider it when that batch is small, where "
            "per-process statistics get noisy. No effect in a single process"
        ),
    )

    def validate(self) -> TrainConfig:
        """Each setting's own checks (declared with it), then the rules between settings; UserError names the flag."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["choices"] is not None and value not in meta["choices"]:
                raise UserError(f"{flag(f.name)} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
            if meta["minimum"] is not None and not value >= meta["minimum"]:
                raise UserError(f"{flag(f.name)} must be >= {meta['minimum']}, got {value}")
            if meta["above"] is not None and not value > meta["above"]:
                raise UserError(f"{flag(f.name)} must be > {meta['above']}, got {value}")
        if self.components and not 2 <= self.components < self.nz:
            raise UserError(f"--components must be 0 (off) or 2..{self.nz - 1} (fewer than --nz {self.nz}), got {self.components}")
        if self.steps == 0 and self.epochs == 0:
            raise UserError("give a positive --steps or --epochs")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        check_combination(self.loss, self.unroll, self.d_norm, self.r1)
        try:
            parse_policy(self.augment)
        except ValueError as e:
            raise UserError(f"--augment: {e}") from None
        if self.sync_bn and self.unroll and self.d_norm == "batchnorm":
            # unrolling differentiates D's gradient; SyncBatchNorm's backward is not differentiable
            # (pytorch/pytorch#61222: "derivative for batch_norm_backward_elemt is not implemented")
            raise UserError(
                "--sync-bn with --unroll needs a discriminator without BatchNorm (SyncBatchNorm has no "
                "double backward); add --d-norm layernorm, or leave --sync-bn off"
            )
        return self

    @classmethod
    def resumable(cls) -> set[str]:
        """The settings --resume may change: bookkeeping, and the schedule of the steps still to come."""
        return {f.name for f in dataclasses.fields(cls) if f.metadata["resumable"]}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> TrainConfig:
        unknown = set(d) - set(cls.fields())
        if unknown:
            raise UserError(f"{where}: unknown settings {sorted(unknown)}; see `python -m training.run --help`")
        try:
            return cls(**d)
        except TypeError as e:
            raise UserError(f"{where}: {e}") from None


def read_config_file(path: str) -> dict:
    """A JSON or YAML file of TrainConfig fields (dashes or underscores)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UserError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text)
        else:
            d = json.loads(text)
    except Exception as e:  # yaml and json raise different types; both mean "not parseable"
        raise UserError(f"config file {p} does not parse: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise UserError(f"config file {p} must hold a mapping of settings")
    return {k.replace("-", "_"): v for k, v in d.items()}
