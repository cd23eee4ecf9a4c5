"""Numerical parity of every saved form against eager PyTorch: `python -m export.parity ARTIFACT_DIR`.

Reference: the eager generator in float32 (the limits are measured against it) and a float64 copy
of it (how far each form is from exact arithmetic, shown for information). The eager generator is
rebuilt from the run dir named in the manifest when it is still there with the same weights,
otherwise from the weights inside generator.pt2 (same architecture code, training.models).

Latents: fresh random ones at batch 1, 3 and 64 (the seed is printed; --seed repeats it) plus
fixed seeds through contract.artifact.latents_for_seed, the function the service uses.

Limits (max |diff| / mean |diff| vs eager float32), each on every latent batch:
  TorchScript, .pt2                 max <= 1e-6
  ONNX Runtime float32 (CPU, CUDA)  max <= 1e-5
  ONNX Runtime float16 weights      max <= 2e-2, mean <= 2e-3
  every form, as 8-bit pixels       at most 1 level apart
"""

from __future__ import annotations

import copy
import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common.cli import Failed, OneLineErrorParser, UserError, cli_main
from contract.artifact import EXPORTED_PROGRAM, INPUT_NAME, ONNX, ONNX_FP16, TORCHSCRIPT, ArtifactError, verify
from contract.latents import latents_for_seed
from contract.pixels import to_uint8
from contract.providers import CPU, CUDA
from export import onnx_export, torch_export
from training.models import GeneratorConfig, build_generator
from training.rundir import load_generator

BATCHES = (1, 3, 64)  # fresh latents: single image, odd batch, a full serving batch
FIXED_SEEDS = (0, 1, 1234)
FIXED_N = 8  # images per fixed seed


@dataclass(frozen=True)
class Limits:
    torch_max: float = 1e-6  # TorchScript and .pt2
    fp32_max: float = 1e-5  # ONNX Runtime float32
    fp16_max: float = 2e-2  # ONNX Runtime float16 weights
    fp16_mean: float = 2e-3
    levels: int = 1  # 8-bit pixel levels, every form


@dataclass
class Row:
    form: str  # the artifact file, or "eager float32"
    runtime: str
    max_abs: float  # vs eager float32
    mean_abs: float
    max_abs_fp64: float  # vs the float64 reference
    levels: int  # max 8-bit pixel difference vs eager float32 (eager row: vs float64)
    limit_max: float | None
    limit_mean: float | None
    limit_levels: int

    @property
    def ok(self) -> bool:
        return (
            (self.limit_max is None or self.max_abs <= self.limit_max)
            and (self.limit_mean is None or self.mean_abs <= self.limit_mean)
            and self.levels <= self.limit_levels
        )


@dataclass
class Report:
    reference: str
    fresh_seed: int
    rows: list[Row]
    problems: dict[str, list[str]]  # file -> contract problems (onnx.checker, signature, metadata)
    limits: Limits
    images: int

    def failed(self) -> set[str]:
        """Names of the forms (files, or "eager float32") that failed a limit or the contract."""
        return {r.form for r in self.rows if not r.ok} | {f for f, p in self.problems.items() if p}

    def without(self, form: str) -> Report:
        return dataclasses.replace(
            self, rows=[r for r in self.rows if r.form != form], problems={f: p for f, p in self.problems.items() if f != form}
        )

    def to_manifest(self) -> dict:
        return {
            "reference": self.reference,
            "latents": {
                "fresh_seed": self.fresh_seed,
                "batches": list(BATCHES),
                "fixed_seeds": list(FIXED_SEEDS),
                "fixed_n": FIXED_N,
                "images": self.images,
            },
            "limits": dataclasses.asdict(self.limits),
            "onnx_checker": "check_model(full_check=True) passed",
            "rows": [
                {
                    "form": r.form,
                    "runtime": r.runtime,
                    "max_abs": _sig(r.max_abs),
                    "mean_abs": _sig(r.mean_abs),
                    "max_abs_vs_fp64": _sig(r.max_abs_fp64),
                    "max_8bit_levels": r.levels,
                    "ok": r.ok,
                }
                for r in self.rows
            ],
        }

    def table(self) -> str:
        head = f"{'form':<26}{'runtime':<26}{'max|d|':>10}{'mean|d|':>10}{'max|d| f64':>12}{'8-bit':>7}  {'limits':<31}ok"
        lines = [
            f"parity reference: {self.reference}",
            f"latents: fresh seed {self.fresh_seed} at batch {', '.join(map(str, BATCHES))}; seeds "
            f"{', '.join(map(str, FIXED_SEEDS))} x {FIXED_N} via latents_for_seed ({self.images} images); "
            "|d| vs eager float32, f64 = vs float64 eager",
            head,
            "-" * len(head),
        ]
        for r in self.rows:
            limits = [
                f"max<={r.limit_max:g}" if r.limit_max is not None else "",
                f"mean<={r.limit_mean:g}" if r.limit_mean is not None else "",
                f"8bit<={r.limit_levels}",
            ]
            lines.append(
                f"{r.form:<26}{r.runtime:<26}{_fmt(r.max_abs):>10}{_fmt(r.mean_abs):>10}{_fmt(r.max_abs_fp64):>12}"
                f"{r.levels:>7}  {' '.join(x for x in limits if x):<31}{'ok' if r.ok else 'FAIL'}"
            )
        for form, problems in self.problems.items():
            lines += [f"FAIL {p}" for p in problems] if problems else [f"{form}: onnx.checker full_check, signature, metadata ok"]
        return "\n".join(lines)


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.2e}"


def _ort_session(path: Path, cuda: bool) -> ort.InferenceSession | None:
    """A CPU session, or a CUDA one only if CUDA really loads (None otherwise)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if not cuda:
        return ort.InferenceSession(str(path), options, providers=[CPU])
    if CUDA not in ort.get_available_providers():
        return None
    # onnxruntime-gpu lists CUDA even where its CUDA/cuDNN libraries are missing; the failed load is
    # logged (by the default logger) as an error and the session falls back to CPU. Keep that quiet
    # and ask the session which provider it got instead.
    # TF32 off: TF32 rounds conv inputs to 10 mantissa bits (~1e-3 relative), far above the float32 limit.
    providers = [(CUDA, {"use_tf32": "0"}), CPU]
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)  # ORT's default (warnings); it has no getter to save the old value
    return session if session.get_providers()[0] == CUDA else None


def _ort_runner(session: ort.InferenceSession) -> Callable[[np.ndarray], np.ndarray]:
    return lambda z: session.run(None, {INPUT_NAME: z})[0]


def _torch_runner(module: Callable) -> Callable[[np.ndarray], np.ndarray]:
    def run(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(z)).numpy()

    return run


def latent_batches(nz: int, fresh_seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(fresh_seed)
    fresh = [rng.standard_normal((b, nz), dtype=np.float32) for b in BATCHES]
    return fresh + [latents_for_seed(s, FIXED_N, nz) for s in FIXED_SEEDS]


def check(
    artifact_dir: Path,
    module: torch.nn.Module,
    cfg: GeneratorConfig,
    reference: str,
    fresh_seed: int | None = None,
    limits: Limits = Limits(),
) -> Report:
    """Run every form present in artifact_dir on the same latents and compare with eager PyTorch."""
    fresh_seed = secrets.randbelow(2**32) if fresh_seed is None else fresh_seed
    batches = latent_batches(cfg.nz, fresh_seed)
    module = module.eval()
    exact = copy.deepcopy(module).double()
    want = [_torch_runner(module)(z) for z in batches]  # (B, C, H, W) float32 each
    with torch.no_grad():
        want64 = [exact(torch.from_numpy(z).double()).numpy() for z in batches]
    torch_rt = f"torch {torch.__version__.split('+')[0]} CPU"
    ort_rt = f"onnxruntime {ort.__version__}"

    # (form, runtime, runner, limit_max, limit_mean)
    forms: list[tuple[str, str, Callable, float | None, float | None]] = [
        (TORCHSCRIPT, torch_rt, _torch_runner(torch_export.load_torchscript(artifact_dir / TORCHSCRIPT)), limits.torch_max, None),
        (
            EXPORTED_PROGRAM,
            torch_rt,
            _torch_runner(torch_export.load_program(artifact_dir / EXPORTED_PROGRAM).module()),
            limits.torch_max,
            None,
        ),
    ]
    problems = {}
    onnx_files = [(ONNX, limits.fp32_max, None)]
    if (artifact_dir / ONNX_FP16).is_file():
        onnx_files.append((ONNX_FP16, limits.fp16_max, limits.fp16_mean))
    for name, limit_max, limit_mean in onnx_files:
        problems[name] = onnx_export.check_onnx(artifact_dir / name, cfg)
        if problems[name]:
            continue  # a file that breaks the contract is not run
        for cuda in (False, True):
            session = _ort_session(artifact_dir / name, cuda)
            if session is not None:
                forms.append((name, f"{ort_rt} {'CUDA' if cuda else 'CPU'}", _ort_runner(session), limit_max, limit_mean))

    # The eager row is the reference itself: its float64 column is float32 arithmetic's own error.
    max64, _, levels64 = _compare(want, want64)
    rows = [Row("eager float32", torch_rt, 0.0, 0.0, max64, levels64, None, None, limits.levels)]
    for form, runtime, run, limit_max, limit_mean in forms:
        got = [run(z) for z in batches]
        bad = [f"{g.dtype} {g.shape}" for g, w in zip(got, want) if g.shape != w.shape or g.dtype != np.float32]
        if bad:
            problems.setdefault(form, []).append(f"{form} ({runtime}) returned {bad[0]}, expected float32 {want[0].shape[1:]} per image")
            continue
        max_abs, mean_abs, levels = _compare(got, want)
        rows.append(Row(form, runtime, max_abs, mean_abs, _compare(got, want64)[0], levels, limit_max, limit_mean, limits.levels))
    return Report(reference, fresh_seed, rows, problems, limits, sum(len(z) for z in batches))


def _compare(got: list[np.ndarray], want: list[np.ndarray]) -> tuple[float, float, int]:
    """(max |diff|, largest per-batch mean |diff|, max 8-bit level difference) over all latent batches."""
    max_abs = mean_abs = 0.0
    levels = 0
    for g, w in zip(got, want):
        d = np.abs(g.astype(np.float64) - w)
        max_abs, mean_abs = max(max_abs, float(d.max())), max(mean_abs, float(d.mean()))
        levels = max(levels, int(np.abs(to_uint8(g).astype(np.int16) - to_uint8(w)).max()))
    return max_abs, mean_abs, levels


def reference_module(artifact_dir: Path, manifest: dict, run_dir: str | None) -> tuple[GeneratorConfig, torch.nn.Module, str]:
    """The eager generator: from `run_dir` if given, else from the manifest's source run dir when it still
    holds the exported weights, else from the weights inside generator.pt2."""
    source = manifest.get("source") or {}
    if run_dir is not None:
        cfg, module, meta = load_generator(run_dir)  # UserError on a bad run dir
        if meta.get("weights_sha256") != source.get("generator_sha256"):
            raise UserError(f"run dir {run_dir} holds other weights than the ones {artifact_dir} was exported from")
        return cfg, module, f"eager PyTorch rebuilt from run dir {run_dir}"
    if source.get("run_dir"):
        try:
            cfg, module, meta = load_generator(source["run_dir"])
            if meta.get("weights_sha256") == source.get("generator_sha256"):
                return cfg, module, f"eager PyTorch rebuilt from run dir {source['run_dir']}"
        except UserError:
            pass  # moved, deleted or damaged since the export: the program's weights are the fallback
    if "generator" not in source:
        raise UserError(f"{artifact_dir / 'manifest.json'} has no source.generator config; re-export it")
    cfg = GeneratorConfig.from_dict(source["generator"])
    module = build_generator(cfg)
    module.load_state_dict(torch_export.load_program(artifact_dir / EXPORTED_PROGRAM).state_dict)
    return cfg, module.eval(), f"eager PyTorch (training.models) with the weights in {EXPORTED_PROGRAM} (source run dir not available)"


@cli_main
def main(argv=None) -> None:
    parser = OneLineErrorParser(
        prog="python -m export.parity",
        description="Check an exported artifact: hashes against its manifest, the ONNX contract "
        "(onnx.checker full_check, input/output signature, metadata), and the numerical parity of every "
        "saved form against eager PyTorch. Prints a table; exits 1 if any check fails, 2 on bad input.",
    )
    parser.add_argument("artifact_dir", metavar="ARTIFACT_DIR", help="folder written by `python -m export` (holds manifest.json)")
    parser.add_argument(
        "--run-dir",
        help="run dir to rebuild the eager reference from (default: the manifest's source "
        "run dir if present, else the weights in generator.pt2)",
    )
    parser.add_argument("--seed", type=int, help="seed of the fresh random latents (default: a new one, printed)")
    args = parser.parse_args(argv)
    artifact_dir = Path(args.artifact_dir)
    try:
        manifest = verify(artifact_dir)
    except ArtifactError as e:
        raise UserError(str(e)) from None
    cfg, module, reference = reference_module(artifact_dir, manifest, args.run_dir)
    report = check(artifact_dir, module, cfg, reference, args.seed)
    print(report.table())
    if report.failed():
        raise Failed(f"parity failed for {', '.join(sorted(report.failed()))}")
    print("parity ok")


if __name__ == "__main__":
    main()
