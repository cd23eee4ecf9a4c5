"""An untrained generator as a run dir, for tests and load tests that need a second real model without training.

    python -m training.untrained RUN_DIR                          # ngf 8, seed 0, conv weights x4
    python -m training.untrained RUN_DIR --config '{"ngf": 64}' --seed 1 --scale 2

The DCGAN init (N(0, 0.02)), seeded, with the conv weights scaled by `--scale` so that the images vary with the
latents (at the plain init they are nearly flat). `python -m export RUN_DIR` turns it into an artifact like any run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.cli import OneLineErrorParser, UserError, cli_main
from training.models import GeneratorConfig, build_generator, init_weights
from training.rundir import save_generator


def save_untrained(run_dir: Path, cfg: GeneratorConfig, seed: int, scale: float) -> None:
    generator = build_generator(cfg)
    init_weights(generator, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for p in generator.parameters():
            if p.dim() > 1:  # conv and linear weights; BatchNorm's scale and shift stay as initialised
                p.mul_(scale)
    save_generator(run_dir, cfg, generator)
    note = {"note": f"untrained generator: DCGAN init seeded {seed}, conv weights x{scale:g}"}
    (run_dir / "config.json").write_text(json.dumps(note))


@cli_main
def main(argv=None) -> None:
    parser = OneLineErrorParser(prog="python -m training.untrained", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="run dir to write (generator weights and sidecar)")
    parser.add_argument("--config", default='{"ngf": 8}', help="GeneratorConfig fields as JSON (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=4.0, help="factor on the conv weights (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        cfg = GeneratorConfig.from_dict(json.loads(args.config))
    except (ValueError, TypeError) as e:
        raise UserError(f"--config {args.config!r}: not GeneratorConfig fields as JSON ({e})") from None
    save_untrained(args.run_dir, cfg, args.seed, args.scale)


if __name__ == "__main__":
    main()
