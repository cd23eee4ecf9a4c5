"""`python3 -m research.gpu_check`: the whole project on one NVIDIA GPU, one command, one results file.

Stages, each a real command of the project with its own time limit (a failed stage is recorded and
the next one runs; stages past the --budget, 8 minutes by default, are skipped and say so):

  env          GPU, driver, torch and its CUDA, ONNX Runtime and its providers
Serving first, on the committed default model (artifacts/default: generator.onnx and generator.fp16.onnx):
  ort-bench    python -m loadtest.backend_bench: in-process images/s per runtime and batch size (ORT CUDA, fp16, graphs)
  serve        python -m loadtest.run: `bentoml serve` on CUDA (DCGAN_REQUIRE_CUDA=1) under a locust sweep, n=1 and
               n=64 from 1 to 128 users, beside batching off, the other DCGAN_GENERATOR mode and fp32
  serve-workers  the same sweep with 4 entry workers (DCGAN_WORKERS), in process and with a generator service
  determinism  python -m loadtest.determinism on CUDA: a seed's images alone vs inside others' batches, and as a prefix
Then training, on the GPU's own run:
  train-bench  python -m research.train_bench --device cuda, 64x64, batch 64: the PyTorch example's float32
               eager loop beside ours in float32 and in bfloat16 autocast, channels_last (300 timed steps each)
  compile      the same plus our bfloat16 loop under torch.compile (upsample generator): does compiling pay?
  train        python -m training.run: 300 steps at 64x64 on the GPU (bf16, channels_last); the run dir
               the next stages use
  export       python -m export --fp16: ONNX float32 + float16, TorchScript, .pt2, parity checked inside
  parity       python -m export.parity: every form vs eager PyTorch; must hold CUDA rows for both ONNX files

Where it runs: by default it makes a virtual environment in WORK/venv and installs into it from the
project's own files: `pip install torch==2.13.0` (on Linux x86_64 PyPI's wheel is the CUDA build;
--torch-index-url picks another, e.g. https://download.pytorch.org/whl/cu130), then
`pip install -e '.[train,loadtest]' 'onnxruntime-gpu[cuda,cudnn]==1.31.1'` (ONNX Runtime's CUDA 13
and cuDNN libraries as wheels, as bentofile.yaml has them). --wheels DIR installs offline from a
folder of wheels; --python PY skips installing and uses an interpreter that has it all.

Without network there, research/gpu_stage.py brings the packages the machine lacks first (see its --help).

--cpu-smoke runs every stage on the CPU at toy sizes (the GPU-only checks off): it proves the
plumbing on a machine without a GPU, it measures nothing worth quoting.

Examples:
  python3 -m research.gpu_check                                   # fresh GPU machine, network to PyPI
  python3 -m research.gpu_check --python .venv/bin/python         # an environment you already have
  python3 -m research.gpu_check --stages env,train-bench,train    # only some stages
  .venv/bin/python -m research.gpu_check --cpu-smoke --python .venv/bin/python

Only the standard library is imported here: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import Failed, OneLineErrorParser, UserError, cli_main  # stdlib-only modules
from common.paths import REPO_ROOT
from contract.providers import CUDA  # a module without imports

TORCH = "torch==2.13.0"  # the README's pin
ORT_GPU = "onnxruntime-gpu[cuda,cudnn]==1.31.1"  # as bentofile.yaml installs it
STAGES = ("env", "ort-bench", "serve", "serve-workers", "determinism", "train-bench", "compile", "train", "export", "parity")

ENV_PROBE = r"""
import importlib.metadata as md, json, platform, sys
out = {"python": sys.version.split()[0], "platform": platform.platform()}
for name in ("torch", "onnxruntime-gpu", "onnxruntime", "onnx", "bentoml", "locust"):
    try:
        out[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
try:
    import torch
    out.update(torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpus=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                   gpu_memory_gib=round(p.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
except ImportError as e:
    out["torch_error"] = str(e)
try:
    import onnxruntime as ort
    out["ort_providers"] = ort.get_available_providers()
except ImportError as e:
    out["ort_error"] = str(e)
print("ENV " + json.dumps(out))
"""


@dataclass
class Stage:
    name: str
    what: str  # one line for the results file
    argv: list[str]
    timeout_s: float
    check: Callable[[str], list[str]] = lambda output: []  # problems found in its output or files
    figures: Callable[[str], str] = lambda output: ""  # what the results file quotes (markdown)
    env: dict[str, str] = field(default_factory=dict)  # set for this stage's process


@dataclass
class Result:
    stage: Stage
    status: str  # ok, FAIL, skipped
    seconds: float = 0.0
    rc: int | None = None
    problems: list[str] = field(default_factory=list)
    figures: str = ""
    log: Path | None = None


def say(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


# --- what each stage's output must show ------------------------------------------------------------


def table_lines(output: str) -> str:
    """The markdown table rows a command printed (lines starting with '|'), plus its ceiling lines."""
    keep = [line for line in output.splitlines() if line.startswith("|") or "ceiling" in line]
    return "\n".join(keep)


def bench_problems(output: str, loops: list[str]) -> list[str]:
    """research.train_bench must have printed a row for each loop (of every generator it ran)."""
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in output.splitlines() if line.startswith("| ")]
    return [f"no '{loop}' row in the training bench's table" for loop in loops if not any(r[1:2] == [loop] for r in rows)]


def parity_problems(output: str, cuda: bool) -> list[str]:
    problems = [] if "parity ok" in output else ["export.parity did not print 'parity ok'"]
    if cuda:
        for name in ("generator.onnx", "generator.fp16.onnx"):
            if not re.search(rf"^{re.escape(name)}\s.*CUDA.*\bok\s*$", output, re.M):
                problems.append(f"no passing CUDA row for {name}: ONNX Runtime's CUDA provider did not load or failed parity")
    return problems


def parity_table(output: str) -> str:
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("parity reference")), None)
    return "```\n" + "\n".join(lines[start:]) + "\n```" if start is not None else ""


def ort_bench_problems(json_path: Path, cuda: bool) -> list[str]:
    try:
        results = json.loads(json_path.read_text())["results"]
    except (OSError, ValueError, KeyError) as e:
        return [f"no loadtest.backend_bench JSON at {json_path} ({e})"]
    if not cuda:
        return []
    return [
        f"{form}: {results.get(form)}"
        for form in ("ort-cuda", "ort-cuda-fp16", "ort-cuda-graph")
        if not isinstance(results.get(form), dict)
    ]


def training_figures(run_dir: Path, batch: int) -> str:
    try:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return ""
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r][1:]  # the first window holds start-up
    if not rates:
        return ""
    last = rows[-1]
    return (
        f"training.run: {len(rows)} logged windows, median {sorted(rates)[len(rates) // 2]:,.0f} images/s "
        f"(batch {batch}, after the first window); last step {last['step']}: loss D {last['loss_d']}, "
        f"loss G {last['loss_g']}"
    )


def serve_problems(out: Path, cuda: bool) -> list[str]:
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError) as e:
        return [f"no load-test report at {out / 'report.json'} ({e})"]
    problems = []
    levels = [lv for t in report["targets"] for lv in t["levels"]]
    if not levels:
        problems.append("the sweep measured no level")
    failed = sum(lv["failed"] for lv in levels)  # refusals (429/503 + Retry-After) are counted apart, not failures
    if failed:
        problems.append(f"{failed} failed requests in the sweep")
    if cuda:
        notes = " ".join(n for t in report["targets"] if t["name"] == "bentoml" for n in t["notes"])
        if f"provider {CUDA}" not in notes:
            problems.append(f"our service did not serve on CUDA ({notes or 'no /info note'})")
    return problems


def nested(markdown: str) -> str:
    """A report's headings two levels down, to sit under a stage's heading."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", markdown, flags=re.M)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --- the plan ------------------------------------------------------------------------------------


def plan(py: str, work: Path, smoke: bool) -> list[Stage]:
    """The stages' commands: the GPU sizes, or toy sizes on the CPU for --cpu-smoke."""
    cuda = not smoke
    dev = "cpu" if smoke else "cuda"
    run_dir, artifact, bench_json, lt = work / "run", work / "artifact", work / "bench.json", work / "loadtest"
    workers_lt = work / "loadtest-workers"
    if smoke:
        tb = ["--image-size", "32", "--batch-size", "16", "--steps", "2", "--rounds", "1", "--warmup", "1", "--arch", "upsample"]
        train = ["--image-size", "32", "--batch-size", "16", "--steps", "4", "--ngf", "8", "--ndf", "8", "--log-every", "2"]
        ob = ["--forms", "torch-eager,ort-cpu,ort-cuda", "--batch-sizes", "1,8", "--seconds", "0.3"]
        sweep = ["--users", "1", "--mix", "1", "--duration", "3", "--warmup", "1"]
        batch, clients, workers = 16, 4, 2
    else:
        tb = ["--image-size", "64", "--batch-size", "64", "--steps", "100", "--rounds", "3", "--warmup", "5"]
        train = ["--image-size", "64", "--batch-size", "64", "--steps", "300", "--log-every", "25"]
        ob = ["--seconds", "0.6"]
        # n=1 and n=64 from 1 to 128 users; batching off and the other generator mode beside (the batching goal is at
        # n=1 and 64 users); fp32 beside the fp16 the service picks on CUDA
        sweep = ["--users", "1,16,64,128", "--mix", "1", "--mix", "64", "--duration", "5", "--warmup", "2", "--compare-max-batch", "1"]
        batch, clients = 64, 64
        workers = 4  # entry workers beside the GPU: HTTP, PNG and latents on more cores (docs/performance.md#entry-workers)

    def serving(served: Path) -> list[Stage]:
        return [
            Stage(
                "ort-bench",
                "in-process images/s per runtime and batch size (the serving ceiling)",
                [py, "-m", "loadtest.backend_bench", "--artifact", str(served), *ob, "--json", str(bench_json)],
                150,
                check=lambda out: ort_bench_problems(bench_json, cuda),
                figures=table_lines,
            ),
            Stage(
                "serve",
                "bentoml serve under a short locust sweep (on CUDA: fp16, and fp32 beside it)",
                [py, "-m", "loadtest.run", "--artifact", str(served), "--ceiling", str(bench_json), "--compare-fp32"]
                + ["--compare-generator", *sweep, "--out", str(lt)],
                420,
                check=lambda out: serve_problems(lt, cuda),
                figures=lambda out: nested(read_text(lt / "report.md")),
                env={"DCGAN_REQUIRE_CUDA": "1"} if cuda else {},
            ),
            Stage(
                "serve-workers",
                "the same sweep with several entry workers (DCGAN_WORKERS), the generator in process and as a service",
                [py, "-m", "loadtest.run", "--artifact", str(served), "--ceiling", str(bench_json)]
                + ["--compare-generator", *sweep, "--out", str(workers_lt)],
                420,
                check=lambda out: serve_problems(workers_lt, cuda),
                figures=lambda out: nested(read_text(workers_lt / "report.md")),
                env={"DCGAN_WORKERS": str(workers), **({"DCGAN_REQUIRE_CUDA": "1"} if cuda else {})},
            ),
            Stage(
                "determinism",
                "a seed's bytes alone, inside batches shared with other clients, and as a prefix (on CUDA: fp16, as served)",
                [py, "-m", "loadtest.determinism", "--artifact", str(served), "--clients", str(clients)]
                + ["--json", str(work / "determinism.json")],
                120,
                figures=lambda out: out[out.find("provider ") :].strip() if "provider " in out else "",
                env={"DCGAN_REQUIRE_CUDA": "1"} if cuda else {},
            ),
        ]

    # Serving first, on the committed default model (its generator.onnx and generator.fp16.onnx): those figures come
    # before training, which a short device budget may cut. Training, export and parity then run on the GPU's own run.
    stages = [Stage("env", "GPU, driver, torch, ONNX Runtime", [py, "-c", ENV_PROBE], 60), *serving(REPO_ROOT / "artifacts" / "default")]
    stages.append(
        Stage(
            "train-bench",
            "training images/s: the PyTorch example's fp32 eager loop vs ours (on CUDA: fp32, and bf16 autocast; channels_last)",
            [py, "-m", "research.train_bench", "--device", dev, *tb],
            150,
            check=lambda out: bench_problems(out, ["reference", "ours"] if smoke else ["reference", "ours fp32", "ours bf16"]),
            figures=table_lines,
        )
    )
    if not smoke:  # torch.compile is a CUDA-only row of the bench
        stages.append(
            Stage(
                "compile",
                "the same with our bf16 loop under torch.compile (upsample generator)",
                [py, "-m", "research.train_bench", "--device", dev, *tb, "--arch", "upsample", "--compile"],
                210,
                check=lambda out: bench_problems(out, ["ours bf16+compile"]),
                figures=table_lines,
            )
        )
    stages += [
        Stage(
            "train",
            f"python -m training.run on {dev}: the run dir for the export",
            [py, "-m", "training.run", *train, "--eval-every", "0", "--quiet", "--device", dev, "--out", str(run_dir)],
            150,
            check=lambda out: [] if (run_dir / "generator.safetensors").is_file() else ["no generator written"],
            figures=lambda out: training_figures(run_dir, batch),
        ),
        Stage(
            "export",
            "ONNX fp32 + fp16, TorchScript, .pt2, manifest (parity checked inside)",
            [py, "-m", "export", str(run_dir), "--out", str(artifact), "--fp16", "--no-register"],
            180,
            figures=parity_table,
        ),
        Stage(
            "parity",
            "every form vs eager PyTorch" + (", CUDA rows required" if cuda else ""),
            [py, "-m", "export.parity", str(artifact)],
            120,
            check=lambda out: parity_problems(out, cuda),
            figures=parity_table,
        ),
    ]
    return stages


# --- running -------------------------------------------------------------------------------------


def run_stage(stage: Stage, timeout_s: float, logs: Path) -> Result:
    """Run one stage in its own process group, echoing and logging its output; on timeout, SIGTERM the
    group (loadtest.run then stops its servers and writes its partial report), SIGKILL after 30 s."""
    log = logs / f"{stage.name}.log"
    say(f"{stage.name}: {shlex.join(stage.argv) if stage.name != 'env' else 'environment probe'} (limit {timeout_s:.0f} s)")
    start = time.monotonic()
    output: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENTOML_DO_NOT_TRACK": "True", **stage.env}
    with open(log, "w") as f:
        proc = subprocess.Popen(
            stage.argv,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )

        def pump() -> None:  # a thread, so that a stage that hangs silently is still cut at its limit
            for line in proc.stdout:
                output.append(line)
                f.write(line)
                sys.stdout.write("  " + line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc)
        reader.join(timeout=10)
    text = "".join(output)
    seconds = time.monotonic() - start
    problems = [f"timed out after {timeout_s:.0f} s"] if timed_out else []
    if proc.returncode != 0 and not timed_out:
        problems.append(f"exit code {proc.returncode}")
    if not timed_out:
        problems += stage.check(text)
    status = "ok" if not problems else "FAIL"
    say(f"{stage.name}: {status} in {seconds:.0f} s" + (f": {'; '.join(problems)}" if problems else ""))
    return Result(stage, status, seconds, proc.returncode, problems, stage.figures(text), log)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def install(work: Path, wheels: Path | None, torch_index: str | None, logs: Path) -> tuple[str, float]:
    """A venv in WORK/venv with torch and the project; returns (its python, seconds taken)."""
    if sys.version_info < (3, 11):  # noqa: UP036 (this module runs on a bare machine's python3, before any venv)
        raise UserError(
            f"this python is {sys.version.split()[0]}; onnxruntime-gpu 1.31 needs 3.11 or newer: run with python3.11+ or pass --python"
        )
    venv = work / "venv"
    py = venv / "bin" / "python"
    start = time.monotonic()
    offline = ["--no-index", "--find-links", str(wheels)] if wheels else []
    steps = [] if py.is_file() else [[sys.executable, "-m", "venv", str(venv)]]
    steps += [
        [str(py), "-m", "pip", "install", "-q", *offline, *(["--index-url", torch_index] if torch_index else []), TORCH],
        [str(py), "-m", "pip", "install", "-q", *offline, "-e", ".[train,loadtest]", ORT_GPU],
    ]
    with open(logs / "install.log", "w") as log:
        for argv in steps:
            say("install: " + shlex.join(argv))
            log.write("$ " + shlex.join(argv) + "\n")
            log.flush()
            done = subprocess.run(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                hint = " (on Debian/Ubuntu: apt-get install python3-venv)" if argv[1:3] == ["-m", "venv"] else ""
                raise UserError(f"`{shlex.join(argv)}` failed{hint}; see {logs / 'install.log'}")
    return str(py), time.monotonic() - start


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown-gpu"


def git_commit() -> str:
    def out(*cmd):
        return subprocess.run(["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    commit = out("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (uncommitted changes)" if out("status", "--porcelain", "--untracked-files=no") else "")


def environment(output: str) -> dict:
    line = next((line for line in output.splitlines() if line.startswith("ENV ")), None)
    return json.loads(line[4:]) if line else {}


def nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "not found"
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else f"nvidia-smi failed: {done.stderr.strip()[:200]}"


def results_markdown(
    results: list[Result], env: dict, smi: str, command: str, smoke: bool, install_s: float | None, budget_s: float, total_s: float
) -> str:
    gpu = env.get("gpu") or "no GPU"
    title = "CPU smoke run (plumbing only, not GPU figures)" if smoke else f"GPU check on {gpu}"
    versions = ", ".join(
        f"{k} {env[k]}" for k in ("python", "torch", "onnxruntime-gpu", "onnxruntime", "onnx", "bentoml", "locust") if k in env
    )
    lines = [
        f"# {title}",
        "",
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}; git {git_commit()}; command `{command}`",
        "",
        f"- GPU: {gpu}"
        + (
            f", {env.get('gpu_memory_gib')} GiB, compute capability {env.get('capability')}, {env.get('gpus')} visible"
            if env.get("gpu")
            else ""
        ),
        f"- nvidia-smi: {smi}",
        f"- torch CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}; ONNX Runtime providers: "
        f"{', '.join(env.get('ort_providers', [])) or env.get('ort_error', '?')}",
        f"- versions: {versions}",
        f"- install: {f'{install_s:.0f} s (not counted below)' if install_s is not None else 'none (--python)'}; "
        f"checks: {total_s:.0f} s of a {budget_s:.0f} s budget",
        "",
        "| stage | status | seconds | what |",
        "|---|---|---:|---|",
    ]
    for r in results:
        lines.append(f"| {r.stage.name} | {r.status} | {r.seconds:.0f} | {r.stage.what} |")
    for r in results:
        lines += ["", f"## {r.stage.name}: {r.status}", ""]
        if r.stage.name != "env" and r.stage.argv:
            lines += [f"`{shlex.join(_relative(r.stage.argv))}`", ""]
        lines += [f"- {p}" for p in r.problems]
        if r.problems:
            lines.append("")
        if r.figures:
            lines += [r.figures.strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _relative(argv: list[str]) -> list[str]:
    """Commands as a reader would type them: paths inside the repo relative to it."""
    out = []
    for a in argv:
        p = Path(a)
        out.append(str(p.relative_to(REPO_ROOT)) if p.is_absolute() and p.is_relative_to(REPO_ROOT) else a)
    return out


def parse_args(argv):
    doc = __doc__
    p = OneLineErrorParser(
        prog="python3 -m research.gpu_check",
        description=doc.split("\n\n")[0].split(": ", 1)[1],
        epilog="\n\n".join(doc.split("\n\n")[1:-1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--python",
        metavar="PY",
        help="interpreter that already has torch (CUDA) and the project's [train,loadtest] dependencies; skips installing",
    )
    p.add_argument("--wheels", type=Path, metavar="DIR", help="install offline from this folder of wheels")
    p.add_argument("--torch-index-url", metavar="URL", help="package index for torch (default: PyPI's CUDA wheel)")
    p.add_argument(
        "--work",
        type=Path,
        default=REPO_ROOT / "out" / "gpu-check",
        help="scratch folder: venv, run dir, artifact, logs, load-test report (default: out/gpu-check)",
    )
    p.add_argument(
        "--results",
        type=Path,
        metavar="FILE",
        help="the results file (default: loadtest/results/gpu/<GPU name>.md; with --cpu-smoke or without a GPU WORK/results.md)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=480,
        metavar="SECONDS",
        help="time for all stages (installing not counted); stages that no longer fit are skipped (default: %(default)g)",
    )
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset (default: all): " + ", ".join(STAGES))
    p.add_argument(
        "--cpu-smoke", action="store_true", help="every stage on the CPU at toy sizes, GPU checks off: proves the plumbing without a GPU"
    )
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown or not args.stages:
        raise UserError(f"--stages: unknown {unknown or 'empty list'}; choose from {', '.join(STAGES)}")
    if args.budget <= 0:
        raise UserError(f"--budget must be > 0 seconds, got {args.budget:g}")
    if args.wheels and not args.wheels.is_dir():
        raise UserError(f"--wheels {args.wheels}: not a folder")
    if args.python:
        found = shutil.which(args.python)
        if not found:
            raise UserError(f"--python {args.python}: no such interpreter")
        args.python = os.path.abspath(found)  # not resolved: a venv's python is a link to the base interpreter
    return args


@cli_main
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    work = args.work.resolve()
    logs = work / "logs"
    for old in ("run", "artifact", "loadtest", "logs", "bench.json"):  # a fresh run dir each time; the venv stays
        target = work / old
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    logs.mkdir(parents=True)
    install_s = None
    if args.python:
        py = args.python
    else:
        py, install_s = install(work, args.wheels, args.torch_index_url, logs)
        say(f"installed in {install_s:.0f} s")
    planned = {s.name: s for s in plan(py, work, args.cpu_smoke)}
    smi = nvidia_smi()
    start = time.monotonic()
    results: list[Result] = []
    env: dict = {}
    for name in args.stages:
        stage = planned.get(name)
        if stage is None:  # a CUDA-only stage under --cpu-smoke
            results.append(Result(Stage(name, "CUDA only: not part of --cpu-smoke", [], 0), "n/a"))
            continue
        left = args.budget - (time.monotonic() - start)
        if left < 20:
            results.append(Result(stage, "skipped", problems=[f"skipped: the {args.budget:g} s budget was spent"]))
            say(f"{stage.name}: skipped (budget spent)")
            continue
        result = run_stage(stage, min(stage.timeout_s, left), logs)
        if stage.name == "env":
            env = environment(read_text(result.log))
            if not args.cpu_smoke and not env.get("cuda_available"):
                result.status, result.problems = (
                    "FAIL",
                    result.problems
                    + [
                        f"torch sees no CUDA device (torch {env.get('torch')}, CUDA build {env.get('torch_cuda')}); "
                        "the GPU stages would only fail: stopping"
                    ],
                )
                results.append(result)
                break
            result.figures = "```\n" + json.dumps(env, indent=1) + "\n```"
        results.append(result)
    total_s = time.monotonic() - start
    # a GPU's figures go where the README quotes them from; anything else stays in the scratch folder
    out = args.results or (
        REPO_ROOT / "loadtest" / "results" / "gpu" / f"{slug(env['gpu'])}.md"
        if env.get("gpu") and not args.cpu_smoke
        else work / "results.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    text = results_markdown(
        results, env, smi, shlex.join(["python3", "-m", "research.gpu_check", *argv]), args.cpu_smoke, install_s, args.budget, total_s
    )
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    failed = [r.stage.name for r in results if r.status in ("FAIL", "skipped")]
    if failed:
        raise Failed(f"stages not ok: {', '.join(failed)}; see {out}")
    say(f"results: {out}; every stage ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
