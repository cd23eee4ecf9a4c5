"""`python -m export.record_golden ARTIFACT`: record an artifact's golden outputs (contract/golden_outputs.py), from ONNX Runtime CPU.

    python -m export.record_golden artifacts/default     # add golden.npy and the manifest's "golden" section

`python -m export` records them in every new artifact; this adds them to one exported before. The
tolerance is the parity check's 8-bit limit recorded in the manifest. The manifest is rewritten
atomically with the new file's hash; the artifact must verify first, and is verified again after.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import atomic_write_bytes, atomic_write_json
from contract import golden_outputs
from contract.artifact import MANIFEST, ONNX, ArtifactError, file_sha256, verify
from contract.pixels import to_nhwc_uint8
from contract.providers import CPU


def reference_generator(onnx_path: Path) -> tuple[golden_outputs.Generate, str]:
    """generator.onnx on ONNX Runtime's CPU provider, uint8 NHWC out; and its description for the manifest."""
    session = ort.InferenceSession(str(onnx_path), providers=[CPU])
    name = session.get_inputs()[0].name

    def generate(latents: np.ndarray) -> np.ndarray:
        (images,) = session.run(None, {name: latents})  # (B, C, H, W) in [-1, 1]
        return to_nhwc_uint8(images)

    return generate, f"onnxruntime {ort.__version__} {CPU}, {onnx_path.name}"


def write_images(artifact_dir: Path, nz: int) -> str:
    """Write artifact_dir/golden.npy from its generator.onnx on the CPU; returns the reference's description."""
    generate, reference = reference_generator(artifact_dir / ONNX)
    buf = io.BytesIO()
    np.save(buf, golden_outputs.golden_images(generate, nz), allow_pickle=False)
    atomic_write_bytes(artifact_dir / golden_outputs.GOLDEN, buf.getvalue())
    return reference


def add_to(artifact_dir: Path, manifest: dict) -> dict:
    """Write golden.npy into an exported artifact; return its manifest with the file and the "golden" section added."""
    reference = write_images(artifact_dir, manifest["model"]["nz"])
    path = artifact_dir / golden_outputs.GOLDEN
    files = {**manifest["files"], golden_outputs.GOLDEN: {"sha256": file_sha256(path), "bytes": path.stat().st_size}}
    return {**manifest, "files": dict(sorted(files.items())), "golden": golden_outputs.section(manifest, reference)}


@cli_main
def main(argv=None) -> None:
    parser = OneLineErrorParser(
        prog="python -m export.record_golden", description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artifact", type=Path, metavar="ARTIFACT", help="an exported model artifact (manifest.json + generator.onnx)")
    args = parser.parse_args(argv)
    try:
        manifest = verify(args.artifact)
    except ArtifactError as e:
        raise UserError(f"{args.artifact}: {e}") from None
    manifest = add_to(args.artifact, manifest)
    atomic_write_json(args.artifact / MANIFEST, manifest)
    verify(args.artifact)
    result = golden_outputs.compare(args.artifact, manifest, reference_generator(args.artifact / ONNX)[0])
    where = args.artifact / golden_outputs.GOLDEN
    print(f"{where}: {result['images']} images in {result['cases']} cases, tolerance {result['tolerance_levels']} levels")


if __name__ == "__main__":
    main()
