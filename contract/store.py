"""Register a model artifact in the BentoML model store: `python -m contract.store ARTIFACT_DIR`.

The store entry holds a copy of every artifact file (manifest included), so `bentoml models list`
shows it and a built bento carries it. Registering the same artifact twice returns the first tag:
entries are matched by the sha256 of manifest.json, kept in the entry's metadata.

Torch-free (service/ imports it): bentoml and contract.artifact only.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from contract.artifact import MANIFEST, MODEL_NAME, ArtifactError, file_sha256, verify

LABELLED = ("arch", "image_size", "channels", "nz")  # fields of the manifest's "model" section shown as labels


def register(artifact_dir: str | Path, name: str = MODEL_NAME) -> str:
    """Verify the artifact, store it under `name` unless that exact manifest is already there; return the tag."""
    artifact_dir = Path(artifact_dir)
    manifest = verify(artifact_dir)
    digest = file_sha256(artifact_dir / MANIFEST)
    existing = _find(name, digest)
    if existing is not None:
        return existing
    with bentoml.models.create(name, labels=labels(manifest, digest), metadata=metadata(manifest, digest)) as entry:
        for file in [MANIFEST, *manifest["files"]]:
            shutil.copyfile(artifact_dir / file, entry.path_of(file))
        verify(entry.path)  # an exception here leaves nothing in the store
    return str(entry.tag)


def labels(manifest: dict, manifest_sha256: str) -> dict[str, str]:
    """The entry's labels, short strings `bentoml models list` shows: the manifest's model fields in LABELLED."""
    return {**{key: str(manifest["model"][key]) for key in LABELLED}, "manifest": manifest_sha256[:12]}


def metadata(manifest: dict, manifest_sha256: str) -> dict:
    """The entry's metadata: the manifest's sections a store user reads, and the manifest's sha256 (check_registered)."""
    source = manifest.get("source", {})
    return {
        "manifest_sha256": manifest_sha256,
        "format": manifest["format"],
        "model": manifest["model"],
        "versions": manifest.get("versions", {}),
        "parity": [
            {k: row[k] for k in ("form", "runtime", "max_abs", "mean_abs", "max_8bit_levels", "ok")}
            for row in manifest.get("parity", {}).get("rows", [])
        ],
        "source": {k: source[k] for k in ("run_dir", "config_sha256", "generator_sha256") if k in source},
        "files": sorted(manifest["files"]),
    }


def check_registered(model) -> None:
    """A stored model's manifest must be the one registered (its sha256 is kept in the entry's metadata):
    files and manifest rewritten together in the store pass the hash check, not this one."""
    recorded = model.info.metadata.get("manifest_sha256")
    if recorded is None:
        raise ArtifactError(
            f"{model.tag} holds no manifest_sha256: not registered by `python -m contract.store`; register its artifact again"
        )
    actual = file_sha256(Path(model.path) / MANIFEST)
    if actual != recorded:
        raise ArtifactError(
            f"its {MANIFEST} (sha256 {actual[:12]}...) is not the one registered (sha256 {recorded[:12]}...): "
            "the stored files were changed after registration; register the artifact again"
        )


def _find(name: str, manifest_sha256: str) -> str | None:
    """Tag of an intact store entry holding this exact manifest, if any."""
    try:
        entries = bentoml.models.list(name)
    except NotFound:
        return None
    for entry in entries:
        if entry.info.metadata.get("manifest_sha256") != manifest_sha256:
            continue
        try:
            verify(entry.path)
        except ArtifactError:
            continue  # a damaged copy: register a fresh one
        return str(entry.tag)
    return None


def main(argv=None) -> None:
    """`python -m contract.store`. common.cli is imported here, not above: serving never needs it (the bento carries
    it, bentofile.yaml, for this command)."""
    from common.cli import OneLineErrorParser, UserError, cli_main

    @cli_main
    def run(argv) -> None:
        parser = OneLineErrorParser(
            prog="python -m contract.store",
            description="Copy a model artifact (after checking its hashes) into the BentoML model store, where "
            "the service finds it. Prints the tag. Idempotent: the same artifact gives the same tag.",
        )
        parser.add_argument("artifact_dir", metavar="ARTIFACT_DIR", help="folder written by `python -m export` (holds manifest.json)")
        parser.add_argument("--name", default=MODEL_NAME, help=f"model name in the store (default: {MODEL_NAME})")
        args = parser.parse_args(argv)
        if not re.fullmatch(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?", args.name):  # BentoML's tag rule
            raise UserError(f"--name {args.name!r}: use lowercase letters, digits, '.', '_', '-' (alphanumeric at both ends)")
        try:
            print(register(args.artifact_dir, args.name))
        except ArtifactError as e:
            raise UserError(str(e)) from None

    run(argv)


if __name__ == "__main__":
    main()
