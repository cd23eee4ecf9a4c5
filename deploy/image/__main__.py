"""Build the service's container images: a CPU image and a GPU image from one project.

For each variant: `bentoml build` (the CPU bentofile is derived from bentofile.yaml: see variants.py), then
the build context `bentoml containerize` makes (the bento plus its model copied from the store) and
BentoML's generated Dockerfile, trimmed for serving (no compiler, no git, wheels only: dockerfile.py), built by
the builder's own `build` command. Images are named as
`bentoml containerize` names them: dcgan-service:VERSION (GPU) and dcgan-service-cpu:VERSION (CPU).

  python -m deploy.image                          # both images, with Docker, podman or buildah
  python -m deploy.image --variant cpu --registry registry.example.com/ml
  python -m deploy.image --local-base --sizes     # no registry reachable: debootstrap the base image

Then push (`docker push` / `podman push`) and set the image, by digest, in the overlay: docs/deploy.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from common.cli import OneLineErrorParser, UserError, cli_main
from deploy.image import base, build_settings, dockerfile, engine
from deploy.image.variants import ROOT, VARIANTS, Variant, variant


@dataclass
class Built:
    variant: str
    bento: str  # name:version in the BentoML store
    image: str  # name:version in the engine's store
    tags: list[str]
    unpacked_bytes: int
    compressed_bytes: int | None
    builder: str
    local_base: bool


def parse_args(argv):
    p = OneLineErrorParser(
        prog="python -m deploy.image",
        description=__doc__.split("\n\n")[0],
        epilog="Build logs go to the terminal unless --log-dir is given. Exit 2 with one line on any failure.",
    )
    p.add_argument("--variant", choices=[*VARIANTS, "all"], default="all", help="which image (default: both)")
    p.add_argument(
        "--builder", choices=["auto", *engine.ENGINES], default="auto", help="auto: Docker if its daemon answers, else podman, else buildah"
    )
    p.add_argument("--registry", help="also tag the images REGISTRY/NAME:VERSION, ready to push")
    p.add_argument(
        "--local-base",
        action="store_true",
        help="no registry to pull python:3.11-slim from: build a stand-in with debootstrap (root, Debian), named "
        "localhost/dcgan-local-base:python3.11-slim, and build on it without pulling",
    )
    p.add_argument("--sizes", action="store_true", help="also measure the compressed size (what a registry stores; slower)")
    p.add_argument("--log-dir", type=Path, help="write each build's log to DIR/<variant>.log instead of the terminal")
    p.add_argument("--json", type=Path, help="write what was built (tags, sizes) to this file")
    return p.parse_args(argv)


def bentoml_build(v: Variant, scratch: Path) -> str:
    """`bentoml build` of this variant into the BentoML store ($BENTOML_HOME); returns name:version."""
    bentofile = scratch / f"bentofile.{v.name}.yaml"
    bentofile.write_text(yaml.safe_dump(v.bentofile, sort_keys=False))
    argv = [sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), "-o", "tag", str(ROOT)]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    tags = re.findall(r"^__tag__:(\S+)$", out.stdout, re.M)
    if out.returncode != 0 or len(tags) != 1:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"bentoml build of the {v.name} bento failed: {tail[0]}")
    return tags[0]


def build_image(v: Variant, builder: engine.Engine, args, mounts: list[str]) -> Built:
    import bentoml
    from bentoml._internal.container import construct_containerfile  # what `bentoml containerize` builds from

    with tempfile.TemporaryDirectory(prefix=f"dcgan-{v.name}-") as tmp:
        bento_tag = bentoml_build(v, Path(tmp))
        print(f"[{v.name}] bento {bento_tag}", flush=True)
        bento = bentoml.get(bento_tag)
        image = str(bento.tag)
        tags = [image] + ([f"{args.registry.rstrip('/')}/{image}"] if args.registry else [])
        log = args.log_dir / f"{v.name}.log" if args.log_dir else None
        print(f"[{v.name}] {builder.name} build -> {', '.join(tags)}" + (f" (log: {log})" if log else ""), flush=True)
        python_version = str(v.bentofile.get("docker", {}).get("python_version", ""))
        local_base = base.local_name(python_version) if args.local_base else None
        with construct_containerfile(bento, enable_buildkit=False) as (context, generated):
            generated = Path(generated)
            generated.write_text(dockerfile.for_serving(generated.read_text(), local_base))
            builder.build(Path(context), generated, tags, pull=not args.local_base, mounts=mounts, log=log)
        compressed = builder.compressed_bytes(image, Path(tmp)) if args.sizes else None
    return Built(v.name, bento_tag, image, tags, builder.unpacked_bytes(image), compressed, builder.name, args.local_base)


def gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    builder = engine.find(args.builder)
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    variants = [variant(name) for name in (VARIANTS if args.variant == "all" else (args.variant,))]
    if args.local_base:
        python_versions = {str(v.bentofile.get("docker", {}).get("python_version", "")) for v in variants}
        for py in sorted(python_versions):
            print(f"base image: {base.ensure(builder, py)} (local stand-in)", flush=True)
    with tempfile.TemporaryDirectory(prefix="dcgan-build-settings-") as scratch:
        settings = build_settings.host_pip_settings()
        mounts = build_settings.build_mounts(settings, Path(scratch)) if builder.mounts_in_build else []
        if not settings.empty and not builder.mounts_in_build:
            print(f"note: {builder.name} builds cannot mount the host's pip settings; the build uses the daemon's network as is")
        built = [build_image(v, builder, args, mounts) for v in variants]

    print()
    print("| variant | image | unpacked | compressed |")
    print("|---|---|---|---|")
    for b in built:
        print(f"| {b.variant} | {b.image} | {gb(b.unpacked_bytes)} | {gb(b.compressed_bytes)} |")
    if args.registry:
        print()
        for b in built:
            print(f"push: {builder.name} push {b.tags[-1]}")
    if args.json:
        args.json.write_text(json.dumps([asdict(b) for b in built], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
