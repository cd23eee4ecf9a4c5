"""A local stand-in for the `python:3.11-slim` base image, for machines that cannot pull from a registry.

Debian's debootstrap makes a minimal bookworm root with Debian's Python 3.11; the engine imports it under a
name of its own (`localhost/dcgan-local-base:python3.11-slim`, never the official `python:3.11-slim`, which a
later build with registry access must still pull), and the build's FROM line is pointed at that name
(dockerfile.py), so the build resolves it without a registry (`--pull=never`). It is a documented option
(`python -m deploy.image --local-base`), not the default: with registry access the official image is used.
Needs root, debootstrap and a Debian mirror (read from the machine's apt sources).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from common.cli import UserError

# Debian release whose python3 is the bento's python_version.
SUITES = {"3.11": "bookworm"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LABEL_KEY = "org.opencontainers.image.description"
LABEL = LABEL_KEY + "=debootstrap stand-in for python:{py}-slim, built by deploy.image"


def official_name(python_version: str) -> str:
    """What `FROM python:X.Y-slim` resolves to."""
    return f"docker.io/library/python:{python_version}-slim"


def local_name(python_version: str) -> str:
    """The stand-in's own name: `localhost/` is no registry, so nothing mistakes it for the official image."""
    return f"localhost/dcgan-local-base:python{python_version}-slim"


def is_stand_in(engine, name: str) -> bool:
    return "built by deploy.image" in engine.labels(name).get(LABEL_KEY, "")


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The first Debian (not -security) archive of the machine's apt sources, deb822 or one-line format."""
    texts = [p.read_text(errors="replace") for p in sorted(apt_dir.glob("sources.list.d/*.sources"))]
    uris = [u for t in texts for line in re.findall(r"^URIs:\s*(.+)$", t, re.M) for u in line.split()]
    one_line = [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]
    for p in one_line:
        if p.is_file():
            uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", p.read_text(errors="replace"), re.M)
    for uri in uris:
        if "security" not in uri and uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def ensure(engine, python_version: str) -> str:
    """Build the stand-in unless the engine already has it; returns its name."""
    name, official = local_name(python_version), official_name(python_version)
    if engine.has_image(official) and is_stand_in(engine, official):
        # Earlier versions tagged the stand-in with the official name, which later builds then took for the real
        # image: keep it under its own name and take the official one back.
        print(f"renaming the local stand-in {official} to {name}", flush=True)
        engine.tag(official, name)
        engine.untag(official)
    if engine.has_image(name):
        return name
    suite = SUITES.get(python_version)
    if suite is None:
        raise UserError(
            f"--local-base knows Debian suites for Python {', '.join(SUITES)} only; bentofile.yaml's docker.python_version is "
            f"{python_version or 'not set'}"
        )
    if os.geteuid() != 0:
        raise UserError("--local-base runs debootstrap, which needs root: run as root, or build without it where a registry is reachable")
    if shutil.which("debootstrap") is None:
        raise UserError("--local-base needs debootstrap (Debian/Ubuntu: apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="dcgan-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mirror = debian_mirror()
        print(f"building the local base image {name} from {suite} ({mirror}) with debootstrap...", flush=True)
        packages = f"python{python_version},python3-venv,python3-pip,ca-certificates"
        out = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={packages}", suite, str(rootfs), mirror],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            said = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise UserError(f"debootstrap {suite} from {mirror} failed (exit {out.returncode}): {said[0]}")
        # The official image's pip installs into the system Python; Debian's refuses without this (PEP 668).
        (rootfs / f"usr/lib/python{python_version}/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        for link in ("python", "python3"):  # the official image's interpreter lives in /usr/local/bin
            (rootfs / "usr/local/bin" / link).symlink_to(f"/usr/bin/python{python_version}")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        archive = Path(tmp) / "rootfs.tar"
        packed = subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], capture_output=True, text=True)
        if packed.returncode != 0:
            raise UserError(f"could not pack the debootstrapped root: {packed.stderr.strip()[-300:]}")
        engine.import_rootfs(archive, name, LABEL.format(py=python_version))
    return name
