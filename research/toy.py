"""`python -m research.toy`: the 2D mode-collapse benchmark (ring of 8, grid of 25 Gaussians).

The setting of Metz et al. 2016 and VEEGAN (Srivastava et al. 2017): a ring of 8 Gaussians of
radius 2, std 0.02; PacGAN's (Lin et al. 2018) 5x5 grid at {-4, -2, 0, 2, 4}^2, std 0.05. MLP
generator and discriminator, trained with the very objectives of the DCGAN trainer
(training/objectives.py). Figures from 2,500 samples (training/metrics.py: modes captured,
% high-quality within 3 std, reverse KL over modes), averaged over seeds.

Methods: gan (the non-saturating loss), unrolled (Metz et al.), wgan-gp (Gulrajani et al.), and
pacgan (Lin et al. 2018: the non-saturating loss with a discriminator that judges --pack samples at
once, concatenated; the remedy behind the published PacGAN4 rows; opt-in, not one of the article's).
Its --pack is 2 by default: with 4, PacGAN's headline setting, the discriminator stayed at chance on
the grid for 40,000 steps here, while 2 held all 25 modes (README).

Two sets of networks (--nets): `metz` (default), Metz et al.'s 2D setting (256-d latent, D 2 x 128
ReLU, G lr 1e-3), harsh on the plain loss; `pacgan`, the networks of PacGAN's table 1 (2-d latent,
G 4 x 400 with BatchNorm, D 3 x 200 maxout with 5 pieces, lr 1e-4, batch 100), where its published
GAN row comes from.

Examples:
  python -m research.toy                                   # ring, gan/unrolled/wgan-gp, 3 seeds
  python -m research.toy --mixture grid --steps 20000 --seeds 0 1 2
  python -m research.toy --methods gan unrolled --steps 1500 --seeds 0 --json toy.json
  python -m research.toy --batch-size 512 --steps 20000     # Metz et al.'s batch: both remedies meet the ring goal
  python -m research.toy --mixture grid --nets pacgan --methods gan --steps 20000
  python -m research.toy --mixture grid --nets pacgan --methods pacgan --steps 40000 --seeds 0 1   # 25/25 grid modes
  python -m research.toy --mixture grid --nets pacgan --methods pacgan --steps 160000   # the grid goal, mean of 3 seeds (long)
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import atomic_write_json
from training.ema import EMA, recompute_batchnorm
from training.metrics import mixture_figures
from training.models import ComponentLatent, init_weights
from training.objectives import build_objective

MIXTURES = ("ring", "grid")
EVAL_SAMPLES = 2500  # as PacGAN and VEEGAN

# method -> its settings. GAN and unrolled as Metz et al.'s 2D experiment (D lr 1e-4, G lr 1e-3,
# beta1 0.5) with a deeper G (ToyConfig); WGAN-GP with betas (0.5, 0.9) as Gulrajani et al., lr 5e-4
# and Metz et al.'s 2 x 128 G: a lower lr or the deeper G covered fewer ring modes (figures:
# docs/performance.md#figures-behind-code-comments).
METHODS = {
    "gan": dict(loss="nonsaturating", unroll=0, lr_d=1e-4, lr_g=1e-3, betas=(0.5, 0.999)),
    "unrolled": dict(loss="nonsaturating", unroll=5, lr_d=1e-4, lr_g=1e-3, betas=(0.5, 0.999)),
    "wgan-gp": dict(loss="wgan-gp", unroll=0, lr_d=5e-4, lr_g=5e-4, betas=(0.5, 0.9), g_hidden=128, g_layers=2),
    # PacGAN (Lin et al. 2018): the GAN's settings, D sees packs of 2 (their PacGAN2; --pack changes it;
    # with 4 its D did not learn the grid: docs/performance.md#figures-behind-code-comments)
    "pacgan": dict(loss="nonsaturating", unroll=0, pack=2, lr_d=1e-4, lr_g=1e-3, betas=(0.5, 0.999)),
}
ARTICLE_METHODS = ("gan", "unrolled", "wgan-gp")  # the default: the article's loss and its two remedies

# --nets -> what it sets over METHODS' settings (ToyConfig fields). pacgan: PacGAN section 5.1 / its
# appendix (the 2D experiments of VEEGAN): generator 4 x 400 ReLU with BatchNorm on a 2-d Gaussian
# latent, discriminator 3 x 200 LinearMaxout with 5 pieces, Adam lr 1e-4, batch 100.
NETS = {
    "metz": {},
    "pacgan": dict(
        nz=2, g_hidden=400, g_layers=4, g_batchnorm=True, hidden=200, d_layers=3, maxout=5, batch_size=100, lr_d=1e-4, lr_g=1e-4
    ),
}

# Published figures (modes, % high quality, reverse KL): PacGAN table 1 (ring radius 1 std 0.01 and
# grid as ours, 400 epochs of 100,000 samples; 10 runs), VEEGAN table 1 (ring as ours).
PUBLISHED = {
    "ring": [
        ("GAN (PacGAN t.1)", 6.3, 98.2, 0.45),
        ("PacGAN4 (PacGAN t.1)", 7.8, 95.9, 0.07),
        ("Unrolled GAN (VEEGAN t.1)", 7.6, 35.6, None),
    ],
    "grid": [("GAN (PacGAN t.1)", 17.3, 94.8, 0.70), ("PacGAN4 (PacGAN t.1)", 24.8, 93.6, 0.04)],
}


@dataclass(frozen=True)
class ToyConfig:
    mixture: str = "ring"
    loss: str = "nonsaturating"
    unroll: int = 0  # Metz et al. use 5 or 10 steps
    steps: int = 10000  # generator updates
    # Metz et al. use 512; 256 halves the CPU cost, at some cost to unrolling (figures:
    # docs/performance.md#figures-behind-code-comments)
    batch_size: int = 256
    nets: str = "metz"  # which NETS preset made these settings (recorded in the JSON)
    nz: int = 256  # latent size, as Metz et al.
    hidden: int = 128  # units per hidden layer of D
    d_layers: int = 2  # hidden layers of D (2, as Metz et al.)
    maxout: int = 0  # pieces per maxout unit of D's hidden layers; 0 = ReLU
    # PacGAN: D scores packs of this many samples, concatenated (its input is 2 x pack); 1 = off. As in
    # PacGAN's code, a step then draws batch_size packs: batch_size x pack real and as many generated samples
    pack: int = 1
    # G deeper than Metz et al.'s 2 x 128 (PacGAN's has 4 x 400): with 2 x 128, unrolling plateaued below
    # the high-quality goal; the sharper transitions between modes of 4 x 256 pass it (figures:
    # docs/performance.md#figures-behind-code-comments)
    g_hidden: int = 256  # units per hidden layer of G
    g_layers: int = 4  # hidden layers of G
    g_batchnorm: bool = False  # BatchNorm after each hidden layer of G
    lr_d: float = 1e-4
    lr_g: float = 1e-3
    betas: tuple = (0.5, 0.999)
    # "torch": PyTorch's default Linear init; "normal": N(0, 0.02) weights and zero biases, as PacGAN's
    # code (and DCGAN's) initialise every layer
    init: str = "torch"
    # latent components: G's input is nz + components standard normals, the first `components` turned
    # into a one-hot of their argmax (models.ComponentLatent): K disconnected copies of the nz-d latent; 0 = off
    components: int = 0
    lr_decay: bool = True  # both learning rates decay linearly to 0, as Gulrajani et al.'s CIFAR-10 runs
    ema: float = 0.999  # the figures are of an exponential moving average of G's weights; 0 = the raw G
    seed: int = 0


def mixture(name: str) -> tuple[torch.Tensor, float]:
    """(centers (K, 2), std) of the named mixture."""
    if name == "ring":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return (2.0 * torch.stack([angles.cos(), angles.sin()], 1)).float(), 0.02
    if name == "grid":
        axis = [-4.0, -2.0, 0.0, 2.0, 4.0]
        return torch.tensor(list(itertools.product(axis, axis))), 0.05
    raise UserError(f"mixture {name!r} is unknown; expected one of {MIXTURES}")


def sample_mixture(centers: torch.Tensor, std: float, n: int, g: torch.Generator) -> torch.Tensor:
    """n points: a uniformly chosen center plus N(0, std^2 I) noise. (n, 2)"""
    which = torch.randint(len(centers), (n,), generator=g)
    return centers[which] + std * torch.randn(n, 2, generator=g)


class Maxout(nn.Module):
    """Linear to n_out x pieces, then the max over each unit's pieces (Goodfellow et al. 2013).
    (B, n_in) -> (B, n_out)"""

    def __init__(self, n_in: int, n_out: int, pieces: int):
        super().__init__()
        self.linear, self.n_out, self.pieces = nn.Linear(n_in, n_out * pieces), n_out, pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(-1, self.n_out, self.pieces).amax(-1)


def mlp(n_in: int, hidden: int, n_out: int, layers: int = 2, batchnorm: bool = False, maxout: int = 0) -> nn.Sequential:
    """n_in -> hidden (x layers: Linear [+ BatchNorm] + ReLU, or Maxout with `maxout` pieces) -> n_out.

    2 ReLU layers are G and D of Metz et al.'s 2D experiment."""
    sizes = [n_in] + [hidden] * layers
    blocks = []
    for a, b in zip(sizes, sizes[1:]):
        if maxout:
            blocks.append(Maxout(a, b, maxout))
        else:
            blocks += [nn.Linear(a, b), *([nn.BatchNorm1d(b)] if batchnorm else []), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(hidden, n_out))


class Critic(nn.Module):
    """The discriminator MLP returning one score per point, (B, 2) -> (B,), as objectives expect.

    With pack > 1 (PacGAN) it scores packs: each run of `pack` consecutive points of the batch,
    all real or all generated, is one input of 2 x pack numbers, (B, 2) -> (B / pack,); the
    objectives average over whatever scores D returns. B must divide by pack (train_toy draws
    batch_size packs)."""

    def __init__(self, hidden: int, layers: int = 2, maxout: int = 0, pack: int = 1):
        super().__init__()
        self.pack = pack
        self.net = mlp(2 * pack, hidden, 1, layers, maxout=maxout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, 2 * self.pack)).squeeze(1)


def latent_size(cfg: ToyConfig) -> int:
    """Standard normals per generated point: nz, plus one per latent component."""
    return cfg.nz + cfg.components


def build_toy_generator(cfg: ToyConfig) -> nn.Module:
    """The generator MLP, (B, latent_size) -> (B, 2), behind a ComponentLatent when components > 0."""
    net = mlp(latent_size(cfg), cfg.g_hidden, 2, cfg.g_layers, batchnorm=cfg.g_batchnorm)
    return nn.Sequential(ComponentLatent(cfg.components), net) if cfg.components else net


def evaluate_toy(G: nn.Module, cfg: ToyConfig) -> dict:
    """Figures of EVAL_SAMPLES samples from fixed latents (own generator: training RNGs untouched),
    G in eval mode (BatchNorm: running statistics), restored to its mode after."""
    centers, std = mixture(cfg.mixture)
    was_training = G.training
    with torch.no_grad():
        z = torch.randn(EVAL_SAMPLES, latent_size(cfg), generator=torch.Generator().manual_seed(10_000 + cfg.seed))
        figures = mixture_figures(G.eval()(z), centers, std)
    G.train(was_training)
    return figures


def averaged(ema: EMA, cfg: ToyConfig) -> nn.Module:
    """The EMA generator, BatchNorm statistics (if any) recomputed for its averaged weights."""
    return recompute_batchnorm(ema.model, latent_size(cfg), torch.device("cpu"))


def train_toy(cfg: ToyConfig, log_every: int = 0) -> tuple[nn.Module, dict]:
    """Train G and D on the mixture; returns (G, figures of EVAL_SAMPLES samples + seconds).

    log_every > 0 prints the figures every that many steps (to see where a budget pays), with the
    mean D(x) and D(G(z)) of D's steps since the last line (probabilities; critic scores for wgan-gp):
    a discriminator at chance reads 0.5 and 0.5."""
    centers, std = mixture(cfg.mixture)
    torch.manual_seed(cfg.seed)  # weights, and the gradient penalty's interpolation weights
    data_rng = torch.Generator().manual_seed(cfg.seed + 1)
    G = build_toy_generator(cfg)
    D = Critic(cfg.hidden, cfg.d_layers, cfg.maxout, cfg.pack)
    if cfg.init == "normal":  # the DCGAN trainer's init: N(0, 0.02) Linear weights, zero biases (global RNG)
        init_weights(G)
        init_weights(D)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    objective = build_objective(cfg.loss, cfg.unroll, opt_d)
    ema = EMA(G, cfg.ema) if cfg.ema else None
    decays = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 - s / cfg.steps if cfg.lr_decay else 1.0) for o in (opt_g, opt_d)]
    t0 = time.perf_counter()
    n = cfg.batch_size * cfg.pack  # samples per step: batch_size packs of `pack`
    d_sums = torch.zeros(2)  # D(x), D(G(z)) summed over the steps since the last log line
    for step in range(1, cfg.steps + 1):
        for _ in range(objective.d_steps):
            real = sample_mixture(centers, std, n, data_rng)
            fake = G(torch.randn(n, latent_size(cfg), generator=data_rng))
            d = objective.discriminator_loss(D, real, fake.detach())
            opt_d.zero_grad(set_to_none=True)
            d.loss.backward()
            opt_d.step()
        D.requires_grad_(False)
        loss_g = objective.generator_loss(D, fake, real)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        for schedule in decays:
            schedule.step()
        if ema:
            ema.update(G, step)
        if log_every:
            d_sums += torch.stack([d.d_x, d.d_g_z]).float()
            if step % log_every == 0:
                d_x, d_g_z = (d_sums / log_every).tolist()
                d_sums.zero_()
                print(
                    f"    step {step}: D(x) {d_x:.3f} D(G(z)) {d_g_z:.3f} {evaluate_toy(G, cfg)}"
                    + (f" EMA {evaluate_toy(averaged(ema, cfg), cfg)}" if ema else ""),
                    flush=True,
                )
    seconds = time.perf_counter() - t0
    G = averaged(ema, cfg) if ema else G
    return G, {**evaluate_toy(G, cfg), "seconds": round(seconds, 1)}


def summarize(rows: list[dict]) -> dict:
    """Mean and min/max over seeds of each figure."""
    out = {}
    for key in ("modes", "high_quality", "reverse_kl"):
        vals = [r[key] for r in rows]
        out[key] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}
    out["seconds_per_run"] = sum(r["seconds"] for r in rows) / len(rows)
    return out


def format_table(mixture_name: str, results: dict, cfg_by_method: dict, seeds: list[int]) -> str:
    k = len(mixture(mixture_name)[0])
    lines = [
        f"{mixture_name}: {k} modes; mean over seeds {seeds} (min..max); {EVAL_SAMPLES} samples per run",
        f"{'method':<28} {'steps':>6} {'modes':>14} {'% high quality':>20} {'reverse KL':>20} {'s/run':>7}",
        "-" * 100,
    ]
    for method, s in results.items():
        m, h, r = s["modes"], s["high_quality"], s["reverse_kl"]
        c = cfg_by_method[method]
        nets = "PacGAN nets" if c.nets == "pacgan" else f"G {c.g_layers}x{c.g_hidden}"
        label = f"{method}{f' K={c.unroll}' if c.unroll else ''}{f' pack {c.pack}' if c.pack > 1 else ''}, {nets}"
        lines.append(
            f"{label:<28} {c.steps:>6} "
            f"{m['mean']:>5.1f} ({m['min']:.0f}..{m['max']:.0f}) "
            f"{100 * h['mean']:>8.1f} ({100 * h['min']:.1f}..{100 * h['max']:.1f}) "
            f"{r['mean']:>8.3f} ({r['min']:.3f}..{r['max']:.3f}) {s['seconds_per_run']:>7.0f}"
        )
    for name, modes, hq, rkl in PUBLISHED[mixture_name]:
        lines.append(f"{name:<28} {'':>6} {modes:>5.1f} {'':>8} {hq:>8.1f} {'':>11} {'' if rkl is None else f'{rkl:8.3f}':>8}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m research.toy",
        description="2D mode-collapse benchmark: train MLP GANs on a ring of 8 or a 5x5 grid of Gaussians with "
        "each method and print modes captured, % high-quality samples and reverse KL beside the "
        "published figures. Methods: gan (non-saturating), unrolled (non-saturating through --unroll "
        "Adam steps of D, Metz et al. 2016), wgan-gp (Gulrajani et al. 2017), pacgan (Lin et al. 2018: "
        "non-saturating, D judges --pack samples at once; not one of the article's remedies, opt-in).",
        epilog=__doc__.split("Examples:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = ToyConfig()
    p.add_argument("--mixture", nargs="+", choices=MIXTURES, default=["ring"], help="which mixtures (default: ring)")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=tuple(METHODS),
        default=list(ARTICLE_METHODS),
        help=f"which methods (default: the article's loss and its remedies: {' '.join(ARTICLE_METHODS)})",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed (default: 0 1 2)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"generator updates per run (default: {d.steps})")
    p.add_argument("--unroll", type=int, default=METHODS["unrolled"]["unroll"], help="inner D steps of the unrolled method (default: 5)")
    p.add_argument(
        "--pack",
        type=int,
        default=METHODS["pacgan"]["pack"],
        help="samples per discriminator input of the pacgan method; a step draws --batch-size packs, "
        "so pack times the samples of the other methods, as PacGAN's code (default: 2; with 4, "
        "PacGAN's headline setting, D stayed at chance on the grid here)",
    )
    p.add_argument(
        "--nets",
        choices=tuple(NETS),
        default=d.nets,
        help="metz: Metz et al.'s 2D setting (256-d latent, D 2x128, G lr 1e-3; the default); pacgan: "
        "PacGAN table 1's networks (2-d latent, G 4x400 with BatchNorm, D 3x200 maxout-5, lr 1e-4, "
        "batch 100). The flags below override either",
    )
    p.add_argument("--batch-size", type=int, help=f"samples per step (default: {d.batch_size}; pacgan: 100)")
    p.add_argument("--hidden", type=int, help=f"units per hidden layer of D (default: {d.hidden}; pacgan: 200)")
    p.add_argument("--g-hidden", type=int, help=f"units per hidden layer of G (default: {d.g_hidden}; wgan-gp: 128; pacgan: 400)")
    p.add_argument("--g-layers", type=int, help=f"hidden layers of G (default: {d.g_layers}; wgan-gp: 2; pacgan: 4)")
    p.add_argument("--beta1", type=float, help="Adam beta1 of both networks (default: 0.5, the methods' own; PacGAN's code uses 0.8)")
    p.add_argument(
        "--init",
        choices=("torch", "normal"),
        default=d.init,
        help="torch: PyTorch's default Linear init; normal: N(0, 0.02) weights and zero biases, as PacGAN's code (default: torch)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=d.ema,
        help=f"decay of the moving average of G's weights that is evaluated; 0 = raw G (default: {d.ema})",
    )
    p.add_argument(
        "--components",
        type=int,
        default=d.components,
        metavar="K",
        help="latent components: G reads K extra standard normals as a one-hot of their argmax, so "
        "its latent is K disconnected Gaussians (a mixture prior; 0 = off, the default)",
    )
    p.add_argument(
        "--lr-decay",
        action=argparse.BooleanOptionalAction,
        default=d.lr_decay,
        help="decay both learning rates linearly to 0 over the run (default: on)",
    )
    p.add_argument("--log-every", type=int, default=0, metavar="N", help="print the figures every N steps (default: off)")
    p.add_argument("--json", metavar="FILE", help="also write every run's figures and settings as JSON")
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.steps, args.batch_size or 1, args.hidden or 1, args.g_hidden or 1, args.g_layers or 1, args.unroll, args.pack) <= 0:
        raise UserError("--steps, --batch-size, --hidden, --g-hidden, --g-layers, --unroll and --pack must be > 0")
    if args.components < 0 or args.components == 1:
        raise UserError(f"--components must be 0 (off) or >= 2, got {args.components}")
    if not 0 <= args.ema < 1 or args.log_every < 0:
        raise UserError("--ema must be in [0, 1) and --log-every >= 0")
    if args.beta1 is not None and not 0 <= args.beta1 < 1:
        raise UserError(f"--beta1 must be in [0, 1), got {args.beta1}")
    torch.set_num_threads(1)  # tiny MLPs: threads cost more than they give
    report = {}
    cfg_by_method = {}
    for method in args.methods:
        # precedence: the method's settings, then the --nets preset, then explicit flags
        settings = dict(
            METHODS[method],
            unroll=args.unroll if method == "unrolled" else 0,
            pack=args.pack if method == "pacgan" else 1,
            nets=args.nets,
            **NETS[args.nets],
        )
        flags = (("g_hidden", args.g_hidden), ("g_layers", args.g_layers), ("batch_size", args.batch_size), ("hidden", args.hidden))
        settings.update({k: v for k, v in flags if v})
        if args.beta1 is not None:
            settings["betas"] = (args.beta1, settings["betas"][1])
        cfg_by_method[method] = replace(
            ToyConfig(), steps=args.steps, ema=args.ema, lr_decay=args.lr_decay, init=args.init, components=args.components, **settings
        )
    for mix in args.mixture:
        results, cfgs, runs = {}, {}, []
        for method in args.methods:
            cfg = replace(cfg_by_method[method], mixture=mix)
            rows = []
            for seed in args.seeds:
                _, figures = train_toy(replace(cfg, seed=seed), args.log_every)
                rows.append(figures)
                runs.append({"method": method, **asdict(replace(cfg, seed=seed)), **figures})
                print(f"  {mix} {method} seed {seed}: {figures}", flush=True)
            results[method], cfgs[method] = summarize(rows), cfg
        print(format_table(mix, results, cfgs, args.seeds), flush=True)
        report[mix] = {"summary": results, "runs": runs}
    if args.json:
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
