"""`python -m loadtest.backend_bench`: the in-process ceiling, images/s of every runtime across batch sizes.

No HTTP, no encoding: one process calls the generator on a ready batch of latents, as fast as it
can. The best figure (over runtimes and batch sizes) is the ceiling that loadtest.run divides its
HTTP throughput by. Forms:

    torch-eager          the trained nn.Module (needs the run dir: --run-dir, or the manifest's source run)
    torchscript          generator.torchscript.pt, torch.jit.load
    torch-export         generator.pt2, torch.export.load(...).module()
    ort-service          the service's own session (service.runtime.open_runtime: its providers, threads, options)
    ort-cpu              ONNX Runtime CPU with its default options (spinning thread pool)
    ort-cuda             CUDA, IO binding (latents and images stay on the GPU)       [GPU machines]
    ort-cuda-fp16        the same with generator.fp16.onnx                            [GPU machines]
    ort-cuda-graph       CUDA graphs, one captured graph per batch size, IO binding   [GPU machines]

Each cell: two warm-up calls, then three timed windows of --seconds/3 each; the median window's
images/s is reported (noise from other processes only slows a window down).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import repo_relative
from common.paths import REPO_ROOT
from contract.artifact import EXPORTED_PROGRAM, ONNX, ONNX_FP16, TORCHSCRIPT, ArtifactError, verify
from contract.providers import CPU, CUDA
from service.runtime import cuda_driver_present, open_runtime  # torch-free: the session the service serves with

REPO = REPO_ROOT
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CPU_FORMS = ("torch-eager", "torchscript", "torch-export", "ort-service", "ort-cpu")
CUDA_FORMS = ("ort-cuda", "ort-cuda-fp16", "ort-cuda-graph")


@dataclass(frozen=True)
class Model:
    artifact: Path
    manifest: dict
    run_dir: Path | None  # for torch-eager

    @property
    def output_shape(self) -> tuple[int, int, int]:  # (C, H, W)
        m = self.manifest["model"]
        return m["channels"], m["image_size"], m["image_size"]

    def latents(self, batch: int) -> np.ndarray:
        return np.random.default_rng(0).standard_normal((batch, self.manifest["model"]["nz"]), dtype=np.float32)  # (B, nz)


def throughput(call: Callable[[], object], batch: int, seconds: float) -> tuple[float, float]:
    """(images/s, CPU ms per image) of the median window of three; `call` generates one batch.

    CPU time is this process's, all threads: on a shared machine it moves far less than images/s does.
    """
    call(), call()  # warm-up: kernels, arenas, graph capture
    windows = []
    for _ in range(3):
        calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while True:
            call()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 3:
                break
        windows.append((calls * batch / elapsed, 1000 * (time.process_time() - cpu_start) / (calls * batch)))
    return sorted(windows)[1]


# Each form: (model, batch sizes, seconds) -> {batch: (images/s, CPU ms per image)}, or a string saying why it cannot run here.


def _torch_form(module, model: Model, batches, seconds) -> dict[int, tuple[float, float]]:
    import torch

    out = {}
    for b in batches:
        z = torch.from_numpy(model.latents(b))
        with torch.inference_mode():
            out[b] = throughput(lambda: module(z), b, seconds)  # noqa: B023 (called within this iteration)
    return out


def bench_torch_eager(model: Model, batches, seconds):
    if model.run_dir is None:
        return "no run dir (pass --run-dir; the manifest's source run is not on this machine)"
    from loadtest.torch_eager import load_eager

    return _torch_form(load_eager(model.run_dir).module, model, batches, seconds)


def bench_torchscript(model: Model, batches, seconds):
    import torch

    if TORCHSCRIPT not in model.manifest["files"]:
        return f"the artifact has no {TORCHSCRIPT}"
    return _torch_form(torch.jit.load(str(model.artifact / TORCHSCRIPT)).eval(), model, batches, seconds)


def bench_torch_export(model: Model, batches, seconds):
    import torch

    if EXPORTED_PROGRAM not in model.manifest["files"]:
        return f"the artifact has no {EXPORTED_PROGRAM}"
    return _torch_form(torch.export.load(str(model.artifact / EXPORTED_PROGRAM)).module(), model, batches, seconds)


def _ort_numpy(session: ort.InferenceSession, model: Model, batches, seconds) -> dict[int, tuple[float, float]]:
    name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    result = {}
    for b in batches:
        feed = {name: model.latents(b)}
        result[b] = throughput(lambda: session.run([out_name], feed), b, seconds)  # noqa: B023 (called within this iteration)
    return result


def bench_ort_service(model: Model, batches, seconds):

    cores = len(os.sched_getaffinity(0))
    rt = open_runtime(model.artifact, model.manifest, int(os.environ.get("DCGAN_ORT_THREADS") or cores))
    return _ort_numpy(rt.session, model, batches, seconds)


def bench_ort_cpu(model: Model, batches, seconds):
    session = ort.InferenceSession(str(model.artifact / ONNX), providers=[CPU])
    return _ort_numpy(session, model, batches, seconds)


def _cuda_session(path: Path, options: dict | None = None) -> ort.InferenceSession | str:
    if CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA provider"
    if not cuda_driver_present():
        return "no GPU driver (libcuda.so.1) on this machine"
    session = ort.InferenceSession(str(path), providers=[(CUDA, options or {}), CPU])
    if session.get_providers()[0] != CUDA:
        return "no usable GPU (the CUDA provider did not load)"
    return session


def _bound_call(session: ort.InferenceSession, model: Model, b: int) -> Callable[[], None]:
    """One IO-bound run: latents and images live on the GPU, fixed addresses (what CUDA graphs require)."""
    z = ort.OrtValue.ortvalue_from_numpy(model.latents(b), "cuda", 0)
    images = ort.OrtValue.ortvalue_from_shape_and_type((b, *model.output_shape), np.float32, "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, z)
    binding.bind_ortvalue_output(session.get_outputs()[0].name, images)
    return lambda: session.run_with_iobinding(binding)


def _bench_cuda(model: Model, file: str, batches, seconds):
    if file not in model.manifest["files"]:
        return f"the artifact has no {file}"
    session = _cuda_session(model.artifact / file)
    if isinstance(session, str):
        return session
    return {b: throughput(_bound_call(session, model, b), b, seconds) for b in batches}


def bench_ort_cuda(model: Model, batches, seconds):
    return _bench_cuda(model, ONNX, batches, seconds)


def bench_ort_cuda_fp16(model: Model, batches, seconds):
    return _bench_cuda(model, ONNX_FP16, batches, seconds)


def bench_ort_cuda_graph(model: Model, batches, seconds):
    result = {}
    for b in batches:  # a captured graph is fixed to its shapes: one session per batch size
        session = _cuda_session(model.artifact / ONNX, {"enable_cuda_graph": "1"})
        if isinstance(session, str):
            return session
        result[b] = throughput(_bound_call(session, model, b), b, seconds)
    return result


FORMS = {
    "torch-eager": bench_torch_eager,
    "torchscript": bench_torchscript,
    "torch-export": bench_torch_export,
    "ort-service": bench_ort_service,
    "ort-cpu": bench_ort_cpu,
    "ort-cuda": bench_ort_cuda,
    "ort-cuda-fp16": bench_ort_cuda_fp16,
    "ort-cuda-graph": bench_ort_cuda_graph,
}


def best(results: dict[str, dict[str, float] | str], prefix: str = "") -> dict | None:
    """The fastest (form, batch) among forms whose name starts with `prefix`."""
    cells = [
        (rate, form, int(b))
        for form, rates in results.items()
        if form.startswith(prefix) and isinstance(rates, dict)
        for b, rate in rates.items()
    ]
    if not cells:
        return None
    rate, form, b = max(cells)
    return {"form": form, "batch": b, "images_per_s": rate}


def run_bench(artifact: Path, run_dir: Path | None, forms, batches, seconds, progress=print) -> dict:
    try:
        manifest = verify(artifact)
    except ArtifactError as e:
        raise UserError(str(e)) from None
    if run_dir is None:  # the run the artifact came from, if it is still on this machine
        source = Path(manifest.get("source", {}).get("run_dir") or "/nonexistent")
        run_dir = source if (source / "generator.json").is_file() else None
    model = Model(artifact, manifest, run_dir)
    results: dict[str, dict[str, float] | str] = {}  # form -> {batch: images/s}, or why it was skipped
    cpu: dict[str, dict[str, float]] = {}  # form -> {batch: CPU ms per image}
    for form in forms:
        progress(f"bench: {form} ...")
        cells = FORMS[form](model, batches, seconds)
        results[form] = cells if isinstance(cells, str) else {str(b): rate for b, (rate, _) in cells.items()}
        if not isinstance(cells, str):
            cpu[form] = {str(b): ms for b, (_, ms) in cells.items()}
    return {
        "artifact": repo_relative(artifact),
        "run_dir": repo_relative(run_dir) if run_dir else None,
        "model": manifest["model"] | {"ngf": manifest.get("source", {}).get("generator", {}).get("ngf")},
        "seconds_per_cell": seconds,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
            "load_avg_1m": os.getloadavg()[0],
        },
        "versions": {"onnxruntime": ort.__version__, "torch": _torch_version()},
        "results": results,
        "cpu_ms_per_image": cpu,
        "ceiling": best(results),
        "ort_ceiling": best(results, "ort-"),
    }


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def table(report: dict) -> str:
    """The results as a markdown table: one row per form, "images/s (CPU ms per image)" per batch size."""
    batches = sorted({int(b) for rates in report["results"].values() if isinstance(rates, dict) for b in rates})
    lines = [
        "images/s (CPU ms per image, all threads of the process) per batch size B",
        "",
        "| form | " + " | ".join(f"B={b}" for b in batches) + " |",
        "|---|" + "---:|" * len(batches),
    ]
    skipped = []
    for form, rates in report["results"].items():
        if isinstance(rates, str):
            skipped.append(f"{form}: skipped, {rates}")
        else:
            cpu = report["cpu_ms_per_image"][form]
            lines.append(f"| {form} | " + " | ".join(f"{rates[str(b)]:,.0f} ({cpu[str(b)]:.2f})" for b in batches) + " |")
    lines += [""] + skipped if skipped else []
    for key, label in (("ceiling", "ceiling (best of all)"), ("ort_ceiling", "ONNX Runtime ceiling")):
        c = report[key]
        if c:
            lines.append(f"\n{label}: **{c['images_per_s']:,.0f} images/s** ({c['form']}, batch {c['batch']})")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--batch-sizes {text!r} is not a comma-separated list of integers") from None
    if any(v < 1 for v in values):
        raise UserError(f"--batch-sizes {text!r}: every batch size must be >= 1")
    return values


def parse_args(argv):
    parser = OneLineErrorParser(
        prog="python -m loadtest.backend_bench",
        description="Images/s of the generator in-process, per runtime and batch size (no HTTP, no PNG encoding). "
        "The best cell is the ceiling that `python -m loadtest.run` divides HTTP throughput by.",
        epilog="example: python -m loadtest.backend_bench --artifact artifacts/default --json out/bench.json",
    )
    parser.add_argument(
        "--artifact",
        type=Path,
        default=REPO / "artifacts" / "default",
        help="model artifact written by `python -m export` (default: artifacts/default)",
    )
    parser.add_argument("--run-dir", type=Path, help="training run dir for torch-eager (default: the manifest's source run, if present)")
    parser.add_argument(
        "--forms",
        default=",".join(CPU_FORMS + CUDA_FORMS),
        help=f"comma-separated subset of {', '.join(FORMS)} (default: all; GPU forms skip themselves without a GPU)",
    )
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="default: %(default)s")
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per cell, after warm-up (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON (loadtest.run --ceiling reads it)")
    args = parser.parse_args(argv)
    args.forms = [f.strip() for f in args.forms.split(",")]
    unknown = [f for f in args.forms if f not in FORMS]
    if unknown:
        raise UserError(f"--forms: unknown {unknown}; choose from {', '.join(FORMS)}")
    args.batch_sizes = _int_list(args.batch_sizes)
    if args.seconds <= 0:
        raise UserError(f"--seconds must be > 0, got {args.seconds}")
    return args


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    report = run_bench(args.artifact, args.run_dir, args.forms, args.batch_sizes, args.seconds, progress=lambda m: print(m, flush=True))
    print(f"\n{report['machine']['cores']} cores, load average {report['machine']['load_avg_1m']:.1f} at start\n")
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
