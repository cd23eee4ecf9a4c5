"""`python -m export.strip_paths ARTIFACT_DIR`: remove the exporting machine's paths from an older artifact.

Artifacts exported before the exporter dropped them carry a Python stack trace per graph node, with
absolute source and site-packages paths, in generator.onnx, generator.fp16.onnx and generator.pt2.
This removes those traces (weights and graphs untouched), rewrites the manifest's hashes and sizes,
and records the command in the manifest. Re-check the result with `python -m export.parity ARTIFACT_DIR`.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path

import onnx

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import atomic_write_bytes, atomic_write_json
from contract.artifact import EXPORTED_PROGRAM, MANIFEST, ONNX, ONNX_FP16, ArtifactError, file_sha256, verify
from export import onnx_export, torch_export


def strip_artifact(artifact_dir: Path) -> dict[str, int]:
    """Strip every form in place (atomically, file by file) and rewrite the manifest; returns traces removed per file."""
    try:
        manifest = verify(artifact_dir)  # refuse a damaged artifact before touching it
    except ArtifactError as e:
        raise UserError(str(e)) from None
    removed = {}
    for name in (ONNX, ONNX_FP16):
        if name in manifest["files"]:
            model = onnx.load(artifact_dir / name)
            removed[name] = onnx_export.strip_stack_traces(model)
            atomic_write_bytes(artifact_dir / name, model.SerializeToString())
    if EXPORTED_PROGRAM in manifest["files"]:
        import torch

        program = torch_export.load_program(artifact_dir / EXPORTED_PROGRAM)
        removed[EXPORTED_PROGRAM] = torch_export.strip_stack_traces(program)
        with tempfile.TemporaryDirectory(dir=artifact_dir) as tmp:
            torch.export.save(program, str(Path(tmp) / EXPORTED_PROGRAM))
            atomic_write_bytes(artifact_dir / EXPORTED_PROGRAM, (Path(tmp) / EXPORTED_PROGRAM).read_bytes())
    for name in manifest["files"]:
        path = artifact_dir / name
        manifest["files"][name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    command = shlex.join(["python", "-m", "export.strip_paths", *sys.argv[1:]])
    manifest["commands"] = [*manifest.get("commands", []), command]
    atomic_write_json(artifact_dir / MANIFEST, manifest)
    return removed


@cli_main
def main(argv=None) -> None:
    parser = OneLineErrorParser(prog="python -m export.strip_paths", description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("artifact_dir", metavar="ARTIFACT_DIR", type=Path, help="folder written by `python -m export`")
    args = parser.parse_args(argv)
    if not (args.artifact_dir / MANIFEST).is_file():
        raise UserError(f"{args.artifact_dir} holds no {MANIFEST}: pass a folder written by `python -m export`")
    for name, count in strip_artifact(args.artifact_dir).items():
        print(f"{name}: {count} stack traces removed")
    print(f"rewrote {args.artifact_dir / MANIFEST}; check it with: python -m export.parity {args.artifact_dir}")


if __name__ == "__main__":
    main()
