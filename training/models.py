"""The article's DCGAN networks, and the paper's all-convolutional generator.

Generator ("upsample", the article's): Linear(nz -> C*4*4) -> reshape ->
[BatchNorm -> Upsample x2 -> Conv 3x3 s1 'same' -> ReLU] x (log2(size) - 2) -> Conv 3x3 -> Tanh.

Generator ("convtranspose", Radford et al. 2015 as in pytorch/examples dcgan):
ConvT(nz -> C, 4, 1, 0) -> BN -> ReLU -> [ConvT(4, 2, 1) -> BN -> ReLU] ... -> ConvT -> Tanh.

Discriminator (the article's): [Conv 4x4 s2 -> LeakyReLU(0.2) -> Dropout -> Norm (not on the first
block)] down to 4x4 -> flatten -> Linear -> one logit. The article ends in a Sigmoid; we return the
logit and train with BCE-with-logits (numerically stable), applying the sigmoid only where a
probability is shown (D(x), D(G(z)) in the logs).

Both generators take z of shape (B, nz) and return images (B, C, H, W) in [-1, 1], so export and
serving never need to know which architecture they hold.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from common.cli import UserError

GENERATOR_ARCHS = ("upsample", "convtranspose")
DISCRIMINATOR_NORMS = ("batchnorm", "layernorm", "none")
IMAGE_SIZES = (32, 64, 128)


def _check_size(image_size: int) -> int:
    """Number of x2 stages from 4x4 to image_size; image_size must be a power of two >= 8."""
    if image_size < 8 or image_size & (image_size - 1):
        raise UserError(f"image size {image_size} is not a power of two >= 8; use one of {IMAGE_SIZES}")
    return int(math.log2(image_size)) - 2


def _widths(base: int, stages: int, cap_mult: int = 8) -> list[int]:
    """Channel widths from the 4x4 stage outwards: base*2^(stages-1), ..., base (capped at base*8)."""
    return [base * min(2 ** (stages - 1 - i), cap_mult) for i in range(stages)]


@dataclass(frozen=True)
class GeneratorConfig:
    arch: str = "upsample"  # "upsample" (the article's) or "convtranspose" (the paper's)
    nz: int = 100  # latent size; z ~ N(0, 1)^nz
    image_size: int = 32  # output side; a power of two (32, 64, 128)
    channels: int = 1  # 1 = grayscale, 3 = RGB
    ngf: int = 64  # width of the last stage; earlier stages double it, capped at 8x
    # latent components (ComponentLatent): the first K of the nz coordinates pick one of K components
    # (one-hot of their argmax), the other nz - K are the Gaussian within it; 0 = off (the article's)
    components: int = 0

    def __post_init__(self):
        if self.arch not in GENERATOR_ARCHS:
            raise UserError(f"generator arch {self.arch!r} is unknown; expected one of {GENERATOR_ARCHS}")
        if self.nz <= 0:
            raise UserError(f"nz must be > 0, got {self.nz}")
        if self.channels not in (1, 3):
            raise UserError(f"channels must be 1 or 3, got {self.channels}")
        if self.ngf <= 0:
            raise UserError(f"ngf must be > 0, got {self.ngf}")
        if self.components and not 2 <= self.components < self.nz:
            raise UserError(f"components must be 0 (off) or 2..nz-1 = {self.nz - 1}, got {self.components}")
        _check_size(self.image_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GeneratorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"generator config has unknown keys {sorted(unknown)}; expected {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True)
class DiscriminatorConfig:
    image_size: int = 32
    channels: int = 1
    ndf: int = 64  # width of the first block; later blocks double it, capped at 8x
    dropout: float = 0.25  # after each LeakyReLU, as in the article; 0 disables
    norm: str = "batchnorm"  # "batchnorm" (article), "layernorm" or "none" (WGAN-GP critics)

    def __post_init__(self):
        if self.norm not in DISCRIMINATOR_NORMS:
            raise UserError(f"discriminator norm {self.norm!r} is unknown; expected one of {DISCRIMINATOR_NORMS}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_size(self.image_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class UpsampleGenerator(nn.Module):
    """The article's generator: Linear -> reshape -> [BN -> Upsample -> Conv3x3 -> ReLU]* -> Conv -> Tanh."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        stages = _check_size(cfg.image_size)
        widths = _widths(cfg.ngf, stages)
        self.c0 = widths[0]
        self.latent = ComponentLatent(cfg.components) if cfg.components else nn.Identity()  # (B, nz) -> (B, nz)
        self.project = nn.Linear(cfg.nz, self.c0 * 4 * 4)  # (B, nz) -> (B, c0*16)
        blocks = []
        c_in = self.c0
        for c_out in widths[1:] + [cfg.ngf]:
            # (B, c_in, s, s) -> (B, c_out, 2s, 2s)
            blocks += [
                nn.BatchNorm2d(c_in),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        # (B, ngf, H, W) -> (B, channels, H, W)
        self.to_image = nn.Sequential(nn.Conv2d(c_in, cfg.channels, 3, stride=1, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(self.latent(z)).view(z.shape[0], self.c0, 4, 4)  # (B, c0, 4, 4)
        x = self.blocks(x)  # (B, ngf, H, W)
        return self.to_image(x)  # (B, channels, H, W), in [-1, 1]


class ConvTransposeGenerator(nn.Module):
    """The paper's all-convolutional generator (fractionally strided convolutions)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        stages = _check_size(cfg.image_size)
        widths = _widths(cfg.ngf, stages)
        self.latent = ComponentLatent(cfg.components) if cfg.components else nn.Identity()  # (B, nz) -> (B, nz)
        layers = [
            # (B, nz, 1, 1) -> (B, widths[0], 4, 4)
            nn.ConvTranspose2d(cfg.nz, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            # (B, c_in, s, s) -> (B, c_out, 2s, 2s)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        # (B, ngf, H/2, W/2) -> (B, channels, H, W)
        layers += [nn.ConvTranspose2d(widths[-1], cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.latent(z).view(z.shape[0], -1, 1, 1))  # (B, channels, H, W)


class Discriminator(nn.Module):
    """The article's discriminator; returns one logit per image, shape (B,)."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        stages = _check_size(cfg.image_size)
        widths = [cfg.ndf * min(2**i, 8) for i in range(stages)]
        layers = []
        c_in, size = cfg.channels, cfg.image_size
        for i, c_out in enumerate(widths):
            size //= 2
            # (B, c_in, s, s) -> (B, c_out, s/2, s/2)
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            if i > 0 and cfg.norm == "batchnorm":  # the article: no BatchNorm on the first block
                layers.append(nn.BatchNorm2d(c_out))
            elif i > 0 and cfg.norm == "layernorm":
                layers.append(nn.GroupNorm(1, c_out))  # LayerNorm over (C, H, W), per sample
            c_in = c_out
        self.features = nn.Sequential(*layers)  # (B, c_last, 4, 4)
        self.classify = nn.Linear(c_in * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x).flatten(1)).squeeze(1)  # (B,)


class ComponentLatent(nn.Module):
    """A disconnected latent from a connected one: z (B, K + d) -> [one-hot of argmax z[:, :K], z[:, K:]].

    The argmax of K i.i.d. N(0, 1) coordinates is uniform over the K components, so a standard
    Gaussian z still feeds the generator (and the service's latents stay as they are), while what the
    layers after it see is K separate copies of a d-dimensional Gaussian: they can map the copies onto
    separate modes with no latent landing between them (a mixture prior, as DeLiGAN, Gurumurthy et al.
    2017, or Khayatkhoei et al. 2018). ArgMax, Equal and Where only: the same in TorchScript and ONNX,
    and ties (float16) go to the first index everywhere. No weights: state dicts are unchanged."""

    def __init__(self, components: int):
        super().__init__()
        self.components = components
        self.register_buffer("index", torch.arange(components), persistent=False)  # (K,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        select, rest = z[:, : self.components], z[:, self.components :]  # (B, K), (B, d)
        # Where, not a Cast of the mask: float16 conversion of the ONNX graph (onnxconverter-common)
        # retypes a Cast's output but not its `to`, which onnx.checker then rejects
        one_hot = torch.where(select.argmax(1, keepdim=True) == self.index, 1.0, 0.0).to(z.dtype)  # (B, K)
        return torch.cat([one_hot, rest], 1)  # (B, K + d)


def build_generator(cfg: GeneratorConfig) -> nn.Module:
    return UpsampleGenerator(cfg) if cfg.arch == "upsample" else ConvTransposeGenerator(cfg)


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """DCGAN init (Radford et al. 2015): conv/linear weights N(0, 0.02), norm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            m.weight.normal_(0.0, 0.02, generator=generator)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.normal_(1.0, 0.02, generator=generator)
            m.bias.zero_()
