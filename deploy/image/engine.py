"""The OCI builders this project can drive: Docker, podman, buildah (first one present, or the one named).

Each builds from a build context and a Dockerfile, checks for, inspects, imports and exports images.
podman and buildah also run the build's steps with extra read-only mounts: this is how a machine whose
package index or TLS interception needs its own pip settings passes them to the build without writing
them into the image (Docker's `build` has no mounts; Docker hosts are expected to reach the index).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common.cli import UserError

ENGINES = ("docker", "podman", "buildah")


@dataclass(frozen=True)
class Engine:
    name: str  # docker | podman | buildah
    binary: str

    @property
    def mounts_in_build(self) -> bool:
        return self.name in ("podman", "buildah")

    def _run(self, *argv: str, capture: bool = True, check: bool = False) -> subprocess.CompletedProcess:
        out = subprocess.run([self.binary, *argv], capture_output=capture, text=True)
        if check and out.returncode != 0:
            said = (out.stderr or "").strip().splitlines()[-1:] or [f"exit {out.returncode}"]
            raise UserError(f"`{self.name} {argv[0]}` failed: {said[0]}")
        return out

    def _inspect_argv(self, name: str) -> list[str]:
        return ["inspect", "--type", "image", name] if self.name == "buildah" else ["image", "inspect", name]

    def has_image(self, name: str) -> bool:
        return self._run(*self._inspect_argv(name)).returncode == 0

    def labels(self, name: str) -> dict[str, str]:
        where = "{{json .OCIv1.Config.Labels}}" if self.name == "buildah" else "{{json .Config.Labels}}"
        out = self._run(*self._inspect_argv(name)[:-1], "--format", where, name, check=True)
        return json.loads(out.stdout) or {}

    def tag(self, name: str, new_name: str) -> None:
        self._run("tag", name, new_name, check=True)

    def untag(self, name: str) -> None:
        """Remove one name of an image that has another (the image itself stays)."""
        self._run(*(["untag", name, name] if self.name == "podman" else ["rmi", name]), check=True)

    def build(self, context: Path, dockerfile: Path, tags: list[str], *, pull: bool, mounts: list[str], log: Path | None) -> None:
        argv = ["build", "--file", str(dockerfile)]
        for tag in tags:
            argv += ["--tag", tag]
        if not pull:
            argv.append("--pull=never" if self.mounts_in_build else "--pull=false")
        for mount in mounts:
            argv += ["--volume", mount]
        argv.append(str(context))
        if log is None:
            out = self._run(*argv, capture=False)
        else:
            with log.open("w") as f:
                out = subprocess.run([self.binary, *argv], stdout=f, stderr=subprocess.STDOUT, text=True)
        if out.returncode != 0:
            where = f"; the build log is {log}" if log else ""
            raise UserError(f"`{self.name} build` of {tags[0]} failed (exit {out.returncode}){where}")

    def unpacked_bytes(self, name: str) -> int:
        """The image's size on disk, all layers unpacked (buildah only says it rounded: "1.18 GB")."""
        if self.name == "buildah":
            out = self._run("images", "--json", name, check=True)
            (info,) = json.loads(out.stdout)
            number, unit = info["size"].split()
            return round(float(number) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit])
        out = self._run(*self._inspect_argv(name), check=True)
        (info,) = json.loads(out.stdout)
        return int(info["Size"])

    def import_rootfs(self, archive: Path, name: str, label: str) -> None:
        if self.name == "buildah":
            # buildah has no import: a scratch container with the root file system copied in, committed.
            ctr = self._run("from", "scratch", check=True).stdout.strip()
            try:
                self._run("add", ctr, str(archive), "/", check=True)
                self._run("config", "--label", label, ctr, check=True)
                self._run("commit", "--rm", ctr, name, check=True)
            finally:
                self._run("rm", ctr)
            return
        self._run("import", "--change", f"LABEL {label}", str(archive), name, check=True)

    def compressed_bytes(self, name: str, scratch: Path) -> int:
        """The gzip-compressed layers and config a registry would store, as the engine pushes them."""
        if self.name == "docker":
            # docker save writes uncompressed layers; gzip them as `docker push` would (close to, not exactly).
            import gzip

            archive = scratch / "image.tar"
            self._run("save", "-o", str(archive), name, check=True)
            with archive.open("rb") as src, gzip.open(scratch / "image.tar.gz", "wb", compresslevel=6) as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            return (scratch / "image.tar.gz").stat().st_size
        layout = scratch / "oci"
        self._run("push", "--compression-format", "gzip", name, f"oci:{layout}", check=True)
        return sum(p.stat().st_size for p in (layout / "blobs").rglob("*") if p.is_file())


def find(name: str = "auto") -> Engine:
    """The named builder, or with `auto` the first of Docker (when its daemon answers), podman, buildah."""
    names = ENGINES if name == "auto" else (name,)
    if name != "auto" and name not in ENGINES:
        raise UserError(f"unknown builder {name!r}: choose from auto, {', '.join(ENGINES)}")
    for candidate in names:
        binary = shutil.which(candidate)
        if binary is None:
            continue
        if candidate == "docker" and subprocess.run([binary, "info"], capture_output=True).returncode != 0:
            if name == "docker":
                raise UserError("`docker info` fails: start the Docker daemon, or use --builder podman or buildah")
            continue
        return Engine(candidate, binary)
    if name != "auto":
        raise UserError(f"{name} not found: install it, or leave out --builder to use whichever of {', '.join(ENGINES)} is present")
    raise UserError("no container builder found: install Docker, podman or buildah (Debian: apt-get install podman buildah runc)")
