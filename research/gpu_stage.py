"""`python -m research.gpu_stage`: bring the Python packages a GPU machine without network lacks, in parts of bounded size.

  pack      here, with the package index: download for CPython 3.12 on manylinux x86_64 every wheel the project's
            serving, training and load-test stack needs (pyproject.toml's dependencies and its train and loadtest
            extras, torch aside) with all their dependencies; keep what the GPU machine's image lacks
            (research/gpu_machine_packages.txt), plus the small wheels of what it has (--hedge-mb), in case its
            version is too old for a pin; write them as one tar cut into parts of at most --part-mb, each in a folder
            of its own (.gpu-stage/part-01, ...: one path to carry per transfer), and .gpu-stage/manifest.json.
  unpack    there (or here with --dry-run): check each part's sha256, join the parts, check the whole tar's sha256,
            unpack the wheels to --into, then install the stack into the running interpreter's environment with pip,
            offline, from those wheels only: pip keeps what is installed where it satisfies the stack and takes the
            rest from the wheels. onnxruntime (a CPU build) is removed first: onnxruntime-gpu ships the same package.
            --dry-run: instead, pip resolves the stack for that machine (Python 3.12, its platforms, nothing
            installed) from the carried wheels and .gpu-stage/present (the wheels left out as the machine's own),
            installing nothing: the parts hold everything the image lacks. (pip checks Requires-Python against the
            interpreter it runs on, so that check is left to the machine; the wheel tags are checked for 3.12.)

Examples:
  python -m research.gpu_stage pack                      # here: .gpu-stage/part-NN + manifest.json
  python -m research.gpu_stage unpack --dry-run          # here: the check above
  python3 -m research.gpu_stage unpack                   # there, once every part has arrived

Only the standard library is imported: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from common.cli import OneLineErrorParser, UserError, cli_main  # stdlib-only modules
from common.paths import REPO_ROOT

STAGE = REPO_ROOT / ".gpu-stage"
MACHINE_PACKAGES = Path(__file__).with_name("gpu_machine_packages.txt")
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (34, 31, 28, 27, 24, 17, 5)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
LEFT_OUT = ("torch",)  # the machine's own build (CUDA) serves; PyPI's would replace it
REMOVE_FIRST = "onnxruntime"  # the CPU build there; onnxruntime-gpu installs the same `onnxruntime` package


def say(message: str) -> None:
    print(message, flush=True)


def project_name(wheel: str) -> str:
    """'onnxruntime_gpu-1.31.1-cp312-...whl' -> 'onnxruntime-gpu' (PEP 503 normalised)."""
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def stack() -> list[str]:
    """The requirements to bring: pyproject's dependencies and its train and loadtest extras, without torch."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = [*project["dependencies"], *extras["train"], *extras["loadtest"]]
    return [r for r in reqs if not re.match(rf"({'|'.join(LEFT_OUT)})\b", r)]


def machine_has() -> set[str]:
    lines = MACHINE_PACKAGES.read_text().splitlines()
    return {re.sub(r"[-_.]+", "-", line.strip()).lower() for line in lines if line.strip() and not line.startswith("#")}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip(*args: str) -> None:
    argv = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tail = [line for line in (done.stderr or done.stdout).splitlines() if not line.startswith("WARNING: Location")][-8:]
        raise UserError(f"`pip {' '.join(args[:3])} ...` failed:\n" + "\n".join(tail))


def _target_args() -> list[str]:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms]


def pack(part_mb: float, hedge_mb: float) -> None:
    if STAGE.exists():
        shutil.rmtree(STAGE)
    everything, carried, present = STAGE / "all", STAGE / "carried", STAGE / "present"
    for d in (everything, carried, present):
        d.mkdir(parents=True)
    say(f"downloading the stack for CPython {PYTHON_VERSION} on manylinux x86_64 ...")
    pip("download", "-q", *_target_args(), "-d", str(everything), *stack())
    has = machine_has()
    for wheel in sorted(everything.iterdir()):
        its_own = project_name(wheel.name) in has
        if not its_own or wheel.stat().st_size <= hedge_mb * 2**20:
            shutil.copy2(wheel, carried)
        if its_own:
            shutil.copy2(wheel, present)
    shutil.rmtree(everything)
    tar_path = STAGE / "wheels.tar"
    with tarfile.open(tar_path, "w") as tar:  # wheels are zip files already: no compression
        for wheel in sorted(carried.iterdir()):
            tar.add(wheel, arcname=wheel.name)
    parts, size = [], int(part_mb * 2**20)
    with open(tar_path, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(size), b""), start=1):
            folder = STAGE / f"part-{i:02d}"
            folder.mkdir()
            (folder / "chunk").write_bytes(chunk)
            parts.append({"path": f"{folder.name}/chunk", "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {
        "python": PYTHON_VERSION,
        "requirements": stack(),
        "wheels": sorted(w.name for w in carried.iterdir()),
        "tar_sha256": sha256(tar_path),
        "tar_bytes": tar_path.stat().st_size,
        "parts": parts,
    }
    (STAGE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    tar_path.unlink()
    shutil.rmtree(carried)
    say(f"{len(manifest['wheels'])} wheels, {manifest['tar_bytes'] / 2**20:.0f} MB, in {len(parts)} parts of at most {part_mb:g} MB:")
    for part in parts:
        say(f"  {STAGE.name}/{part['path']}  {part['bytes'] / 2**20:5.1f} MB")
    say(f"{len(list(present.iterdir()))} wheels the machine has are kept in {STAGE.name}/present for `unpack --dry-run`")


def join(into: Path) -> dict:
    """Check and join the parts, unpack the wheels into `into`; returns the manifest."""
    manifest_path = STAGE / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"no {manifest_path.relative_to(REPO_ROOT)}: run `python -m research.gpu_stage pack` first (here)")
    manifest = json.loads(manifest_path.read_text())
    into.mkdir(parents=True, exist_ok=True)
    tar_path = into / "wheels.tar"
    with open(tar_path, "wb") as out:
        for part in manifest["parts"]:
            path = STAGE / part["path"]
            if not path.is_file():
                raise UserError(f"part {part['path']} has not arrived (carry {Path(part['path']).parent} in a call of its own)")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise UserError(f"part {part['path']} is damaged: its sha256 is not the manifest's; carry it again")
            out.write(data)
    if sha256(tar_path) != manifest["tar_sha256"]:
        raise UserError("the joined parts do not give the packed tar (sha256 differs): were they packed together?")
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    tar_path.unlink()
    found = sorted(p.name for p in into.glob("*.whl"))
    if found != manifest["wheels"]:
        raise UserError(f"unpacked {len(found)} wheels, the manifest lists {len(manifest['wheels'])}")
    return manifest


def unpack(into: Path, dry_run: bool) -> None:
    manifest = join(into)
    say(f"{len(manifest['wheels'])} wheels checked and unpacked to {into}")
    if dry_run:
        present = STAGE / "present"
        with tempfile.TemporaryDirectory() as target:
            pip(
                "install", "--dry-run", "--ignore-installed", "--ignore-requires-python", "--no-index", "--target", target, *_target_args(),
                "--find-links", str(into), "--find-links", str(present), *manifest["requirements"],
            )  # fmt: skip
        say(f"dry run: pip resolved the whole stack for CPython {manifest['python']} from the parts and the machine's own packages")
        return
    if sys.version_info[:2] != tuple(int(v) for v in manifest["python"].split(".")):
        raise UserError(f"these wheels are for CPython {manifest['python']}, this is {sys.version.split()[0]}")
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", REMOVE_FIRST], capture_output=True)
    pip("install", "-q", "--no-index", "--find-links", str(into), *manifest["requirements"])
    say("installed; onnxruntime-gpu in place of the CPU build")


def parse_args(argv):
    parser = OneLineErrorParser(
        prog="python -m research.gpu_stage",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="pack|unpack")
    p = sub.add_parser("pack", help="download and cut the parts (here, with the package index)")
    p.add_argument("--part-mb", type=float, default=45, help="most MB per part (default: %(default)s)")
    p.add_argument("--hedge-mb", type=float, default=1, help="carry wheels the machine has when at most this big (default: %(default)s)")
    u = sub.add_parser("unpack", help="check, join and install the parts (there), or check them (--dry-run, here)")
    u.add_argument("--into", type=Path, help="where the wheels are unpacked (default: a new temporary folder)")
    u.add_argument("--dry-run", action="store_true", help="resolve for the GPU machine from the parts instead of installing")
    args = parser.parse_args(argv)
    if args.command == "pack" and (args.part_mb <= 0 or args.hedge_mb < 0):
        raise UserError("--part-mb must be > 0 and --hedge-mb >= 0")
    return args


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "pack":
        pack(args.part_mb, args.hedge_mb)
    else:
        unpack(args.into or Path(tempfile.mkdtemp(prefix="gpu-stage-")), args.dry_run)


if __name__ == "__main__":
    main()
