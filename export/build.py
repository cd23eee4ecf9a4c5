"""Run dir -> model artifact: write every form into a temp dir, check them all, then rename into place.

Nothing is written at the destination unless every check passes: the forms, the parity table and
the manifest are built in `.OUT.partial-*` beside OUT, which is removed on any failure.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from common.cli import Failed, UserError
from common.files import atomic_write_json, read_json
from contract.artifact import EXPORTED_PROGRAM, MANIFEST, ONNX, ONNX_FP16, TORCHSCRIPT, file_sha256, verify
from export import manifest as manifest_lib
from export import onnx_export, parity, record_golden, torch_export
from training.rundir import CONFIG, load_generator


class ExportFailed(Failed):
    """A check failed; the table of figures has been printed and no artifact was written (exit 1, common/cli.py)."""


def export_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    opset: int = onnx_export.MIN_OPSET,
    fp16: bool | None = None,  # None: keep it if it passes its limits; True: required; False: skip
    command: str = "",
    limits: parity.Limits = parity.Limits(),
    fresh_seed: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Export RUN_DIR to OUT (default RUN_DIR/artifact). Returns (OUT, manifest)."""
    if not onnx_export.MIN_OPSET <= opset <= onnx_export.MAX_OPSET:
        raise UserError(
            f"--opset {opset} is not supported; use {onnx_export.MIN_OPSET}..{onnx_export.MAX_OPSET} (default {onnx_export.MIN_OPSET})"
        )
    run_dir = Path(run_dir)
    cfg, module, meta = load_generator(run_dir)  # sha256-checked; UserError on a bad run dir
    config_path = run_dir / CONFIG
    run_config = read_json(config_path, "run config")
    out = Path(out) if out is not None else run_dir / "artifact"
    _check_destination(out)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the artifact is meant to be read by the service
        description = manifest_lib.describe(
            cfg,
            opset,
            run_dir=str(run_dir),
            run_config=run_config,
            config_sha256=file_sha256(config_path),
            generator_sha256=meta["weights_sha256"],
            export_command=command,
        )
        # Each writer gets its own copy: exporters may touch module state, the parity reference must not change.
        onnx_export.write_onnx(copy.deepcopy(module), cfg, tmp / ONNX, opset, manifest_lib.onnx_metadata(description))
        torch_export.write_torchscript(copy.deepcopy(module), cfg.nz, tmp / TORCHSCRIPT)
        torch_export.write_program(copy.deepcopy(module), cfg.nz, tmp / EXPORTED_PROGRAM)
        if fp16 is not False:
            try:
                clamped = onnx_export.write_fp16(tmp / ONNX, tmp / ONNX_FP16)
            except Exception as e:  # optional by default: a converter failure only drops this one file
                (tmp / ONNX_FP16).unlink(missing_ok=True)
                if fp16:
                    raise ExportFailed(f"float16 conversion failed ({type(e).__name__}: {e}); no artifact written") from e
                log(f"note: {ONNX_FP16} left out: float16 conversion failed ({type(e).__name__}: {e})")
            else:
                if clamped:
                    log(f"note: {clamped} weights smaller than float16 can hold were clamped to 1e-7 in {ONNX_FP16}")

        report = parity.check(tmp, module, cfg, f"eager PyTorch rebuilt from run dir {run_dir}", fresh_seed, limits)
        log(report.table())
        if fp16 is None and ONNX_FP16 in report.failed():
            log(f"note: {ONNX_FP16} left out: outside its parity limits (pass --fp16 to make that an error)")
            (tmp / ONNX_FP16).unlink()
            report = report.without(ONNX_FP16)
        if report.failed():
            raise ExportFailed(f"parity failed for {', '.join(sorted(report.failed()))}; no artifact written")

        reference = record_golden.write_images(tmp, cfg.nz)  # golden.npy, listed in the manifest's files below
        manifest = manifest_lib.build(tmp, description, report.to_manifest(), golden_reference=reference)
        atomic_write_json(tmp / MANIFEST, manifest)
        verify(tmp)
        _fsync_dir(tmp)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, manifest


def _check_destination(out: Path) -> None:
    """OUT may be new, empty, or an earlier artifact (replaced whole); never some other folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"--out {out} is a non-empty folder that is not a model artifact (no {MANIFEST}); pass a new folder")


def _fsync_dir(folder: Path) -> None:
    """Flush every file and the folder itself, so the rename below publishes complete files."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an earlier artifact at out is moved aside first and deleted after."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old)
