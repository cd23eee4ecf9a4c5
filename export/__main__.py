"""`python -m export RUN_DIR`: turn a training run dir into the model artifact the service loads."""

from __future__ import annotations

import argparse
import re
import shlex
import sys

from common.cli import Failed, OneLineErrorParser, cli_main
from contract.artifact import MODEL_NAME
from export import onnx_export
from export.build import export_run


def parse_args(argv):
    parser = OneLineErrorParser(
        prog="python -m export",
        description="Export the generator of a training run dir to a model artifact: generator.onnx (float32, "
        "dynamic batch), generator.fp16.onnx (float16 weights, float32 input/output), generator.torchscript.pt "
        "(libtorch/C++), generator.pt2 (torch.export) and manifest.json (hashes, versions, parity figures, source "
        "run). Every form is checked against eager PyTorch (table printed); the artifact is written only if all "
        "checks pass, then registered in the BentoML model store.",
        epilog="example: python -m export runs/mnist --out artifacts/default",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run dir written by `python -m training.run` (holds generator.json)")
    parser.add_argument(
        "--out", metavar="DIR", help="artifact folder to write; an earlier artifact there is replaced (default: RUN_DIR/artifact)"
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=onnx_export.MIN_OPSET,
        help=f"ONNX opset, {onnx_export.MIN_OPSET}..{onnx_export.MAX_OPSET} (default: %(default)s, the most widely supported)",
    )
    parser.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--fp16: write generator.fp16.onnx and fail if it misses its parity limits; --no-fp16: skip "
        "it (default: write it if it passes, else leave it out with a note)",
    )
    parser.add_argument(
        "--name",
        default=MODEL_NAME,
        help="model name in the BentoML model store (default: %(default)s, the name the server serves by default); "
        "another name is another model, served beside it with DCGAN_MODELS=dcgan-generator,NAME",
    )
    parser.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="do not register the artifact in the BentoML model store",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?", args.name):  # BentoML's tag rule, as contract.store has it
        parser.error(f"--name {args.name!r}: use lowercase letters, digits, '.', '_', '-' (alphanumeric at both ends)")
    return args


@cli_main
def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out, manifest = export_run(  # UserError (bad input, exit 2) or ExportFailed (a check failed, exit 1): common/cli.py
        args.run_dir,
        args.out,
        opset=args.opset,
        fp16=args.fp16,
        command=shlex.join(["python", "-m", "export", *argv]),
    )
    print(f"artifact: {out} ({', '.join(sorted(manifest['files']))}, manifest.json)")
    if not args.register:
        return
    from contract.store import register  # bentoml is slow to import; only when registering

    try:
        tag = register(out, name=args.name)
    except Exception as e:  # the artifact is complete; say how to retry rather than show a traceback
        raise Failed(
            f"artifact written to {out}, but registering it failed ({type(e).__name__}: {e}); "
            f"retry with `python -m contract.store {out} --name {args.name}`"
        ) from None
    print(f"registered: {tag} (bentoml models get {tag})")


if __name__ == "__main__":
    main()
