"""`python -m loadtest.run`: sweep a server with locust and say how many images/s it serves under a latency bound.

    python -m loadtest.run --host http://127.0.0.1:3000                  # a running server: closed-loop users
    python -m loadtest.run --host http://127.0.0.1:3000 --rates 50,100   # open loop: requests/s on a schedule
    python -m loadtest.run --baseline --compare-max-batch 1 --goals --out loadtest/results   # this project's benchmark
    python -m loadtest.run --models 2 --users 32 --mix 1 --mix 16    # two models in one server vs one, same load

For each server (a running one with --host; else ours, optionally ours with a capped batch size,
ours in fp32, the FastAPI baseline, the peers), one after another so they never share the cores:
start it on a free loopback port, wait for /readyz, warm up, then for each n mix and load level
(concurrent users, or with --rates a target request rate) run locust headless for a bounded time.
Every answer is ok, refused (429/503 + Retry-After: load shed by design) or failed, each counted
with its own latency percentiles. The capacity is, for each n mix, the most images/s of a level
whose p99 stayed under the bound (--p99-bound-ms; default the server's own deadline from /info)
with nothing failed. Between levels it scrapes /metrics for batch sizes. OUT gets locust's files
(locust/), server logs (logs/), report.json, report.md, capacity.png and sweep.png. With --soak
MINUTES it instead holds a moderate load on our server and samples the resident memory of its
every process (soak_rss.csv, soak_rss.png). With --models N it also sweeps our server serving N models (the
artifact registered under N names, DCGAN_MODELS), each level's users split evenly between them, and reports
each model's images/s and latency beside the whole and beside our one-model server at the same load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import repo_relative
from common.server import REPO, Server, check_loopback, existing, http_get, serve_baseline, serve_bentoml
from contract.artifact import MANIFEST, MODEL_NAME, ONNX_FP16, ArtifactError, read_manifest
from contract.providers import CUDA
from loadtest import prometheus
from loadtest import report as reporting
from loadtest.locust_run import LevelStats, LoadLevel, parse_level, run_level
from loadtest.peers import TRITON_MODEL, serve_mosec, serve_triton
from loadtest.response_checks import parse_n_mix

SOAK_INTERVAL_S = 5.0
DEFAULT_BOUND_MS = 2000  # the service's default DCGAN_DEADLINE_MS, for servers whose /info does not say
MIN_OPEN_USERS, MAX_OPEN_USERS = 4, 1024
SERVICE_MAX_MODELS = 4  # the service's default DCGAN_MAX_MODELS; --models N above it raises it for that server
PEERS = ("mosec", "triton")


@dataclass
class Target:
    name: str  # key in report.json ("bentoml", "bentoml-maxbatch2", "bentoml-fp32", "baseline", "external")
    label: str  # shown in tables and plots
    description: str
    start: Callable[[], AbstractContextManager[Server]]
    notes: list[str] = field(default_factory=list)
    v2_model: str = ""  # load it over the Open Inference Protocol (POST /v2/models/NAME/infer), not POST /sample
    models: tuple[str, ...] = ()  # a server of several models: each level's users split between them (--models)


def say(message: str) -> None:
    print(message, flush=True)


def _number_list(text: str, flag: str, kind: type = int) -> list:
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of {'integers' if kind is int else 'numbers'}") from None
    if not all(v >= 1 if kind is int else math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"{flag} {text!r}: every value must be " + (">= 1" if kind is int else "> 0"))
    return values


def _baseline_threads(text: str) -> int | None:
    """'default' -> None (torch's own choice), else a thread count >= 1."""
    if text.strip() == "default":
        return None
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise UserError(f"--baseline-threads entry {text!r} is neither 'default' nor a number >= 1")
    return threads


def parse_args(argv):
    parser = OneLineErrorParser(
        prog="python -m loadtest.run",
        description="Load-test a DCGAN service with locust: use a running server (--host) or start ours, sweep load\n"
        "levels for each n mix, and print the capacity: per n, the most images/s whose p99 stays under a latency\n"
        "bound with nothing failed. Every answer is ok, refused (429/503 with Retry-After: load shed by design) or\n"
        "failed. OUT gets report.md (capacity first, then every level's three outcomes with their latency\n"
        "percentiles, batch sizes, server CPU), report.json, capacity.png (images/s against p99), sweep.png and\n"
        "locust's files. Servers it started are stopped at the end, also on Ctrl-C.",
        epilog="examples:\n"
        "  python -m loadtest.run --host http://127.0.0.1:3000 --mix 16   # the capacity of a running server at n=16\n"
        "  python -m loadtest.run --host http://127.0.0.1:3000 --rates 20,50,100 --mix 1   # open loop, requests/s\n"
        "  python -m loadtest.run --users 2 --duration 5 --mix 1   # a quick look at our own service\n"
        "  python -m loadtest.run --baseline --compare-max-batch 1 --goals --out loadtest/results   # this project's benchmark\n"
        "  python -m loadtest.run --soak 10 --out out/soak   # memory over 10 minutes at moderate load\n"
        "  python -m loadtest.run --models 2 --users 32 --mix 1 --mix 16   # 32 users split between 2 models vs 1 model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--artifact",
        type=Path,
        default=REPO / "artifacts" / "default",
        help="model artifact to serve (default: artifacts/default, the committed model)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: out/loadtest-<UTC time>)")
    parser.add_argument(
        "--users",
        default="1,4,16,32,64",
        help="closed loop: concurrent users per level, each sending its next request when the last is answered (default: %(default)s)",
    )
    parser.add_argument(
        "--rates",
        metavar="LIST",
        help="open loop instead: requests/s per level, e.g. 20,50,100, due on a fixed schedule whatever the answers; "
        "latency counts from when each request was due, so queueing shows, and the rate locust achieved is reported",
    )
    parser.add_argument(
        "--open-users",
        type=int,
        metavar="N",
        help="open loop: users that send the scheduled requests, at most N in flight (default: rate x the bound in "
        f"seconds, at least {MIN_OPEN_USERS}, at most {MAX_OPEN_USERS}: a request waiting longer is past the bound anyway)",
    )
    parser.add_argument(
        "--p99-bound-ms",
        type=float,
        metavar="MS",
        help="the latency bound of the capacity: the most images/s whose p99 is at most MS with nothing failed "
        f"(default: the server's deadline, /info limits.deadline_ms; {DEFAULT_BOUND_MS} where /info does not say)",
    )
    parser.add_argument(
        "--ignore-retry-after",
        action="store_true",
        help="closed loop: a refused user sends again at once instead of waiting the server's Retry-After (raw "
        "hammering, for capacity tests; real clients such as dcgan_client wait)",
    )
    parser.add_argument(
        "--mix",
        action="append",
        dest="mixes",
        metavar="N_MIX",
        help="images per request as n[:weight],...; repeat for several sweeps (default: --mix 1 --mix 16)",
    )
    parser.add_argument("--duration", type=float, default=30, help="measured seconds per level (default: %(default)s)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds of unmeasured load on each server started, before measuring "
        "(default: 10; with --soak 60, so ONNX Runtime's arena has grown to the largest batches first)",
    )
    parser.add_argument("--host", help="load-test this running server instead of starting one, e.g. http://127.0.0.1:3000")
    parser.add_argument("--allow-non-loopback", action="store_true", help="let --host name a server on another machine")
    parser.add_argument(
        "--baseline",
        nargs="?",
        const="",
        metavar="MODEL",
        help="this project's benchmark: also sweep the FastAPI + torch eager baseline (loadtest/baseline.py) serving "
        "MODEL, a run dir or an artifact (default: the served artifact's generator.pt2)",
    )
    parser.add_argument(
        "--baseline-threads",
        default="default,1",
        metavar="LIST",
        help="torch intra-op threads of the baselines, one baseline per entry: 'default' (torch's, one per core) "
        "or a number; the goals compare with the fastest at each level, since torch's own threads collapse "
        "when another process (locust) wants the same cores (default: %(default)s)",
    )
    parser.add_argument(
        "--peers",
        default="",
        metavar="LIST",
        help="this project's benchmark: also sweep these peer servers, comma-separated: 'mosec' (loadtest/mosec_server.py) and 'triton' "
        "(PyTriton, loadtest/triton_server.py; its environment .venv-peers/triton is made on first use), each "
        "doing the service's work per request on the served artifact with its own dynamic batching",
    )
    parser.add_argument(
        "--models",
        type=int,
        metavar="N",
        help="also sweep our service serving N >= 2 models: the served artifact registered under N names "
        f"({MODEL_NAME}, {MODEL_NAME}-2, ...; DCGAN_MODELS), each with its own ONNX Runtime session, queue and deadline. "
        "Each level's users are split evenly between the models (user i asks model i mod N, naming it in the body; "
        "open loop: request k asks model k mod N) and every answer must come from the model asked for. report.md "
        "then shows each model's images/s and p99 beside the whole and beside the one-model server at the same load; "
        "closed-loop levels with fewer than N users are skipped for it",
    )
    parser.add_argument(
        "--compare-max-batch",
        type=int,
        metavar="N",
        action="append",
        default=[],
        help="also sweep our service with DCGAN_MAX_BATCH=N (repeatable); 1 is batching off (no merging at "
        "the entry, no batchable API); the batching goal compares against the smallest N",
    )
    parser.add_argument(
        "--compare-generator",
        action="store_true",
        help="also sweep our service with the other DCGAN_GENERATOR mode (service if the environment runs it in process)",
    )
    parser.add_argument(
        "--compare-fp32",
        action="store_true",
        help="on a GPU, also sweep our service on the fp32 model (it serves generator.fp16.onnx on CUDA)",
    )
    parser.add_argument(
        "--ceiling",
        metavar="run|none|PATH",
        help="this project's benchmark: the in-process ceiling; run `python -m loadtest.backend_bench` first, skip it, "
        "or read its --json file (default: run with --goals, else none)",
    )
    parser.add_argument(
        "--goals",
        action="store_true",
        help="this project's benchmark: add the verdicts on the project's own goals (against the baseline, the peers, "
        "batching off, the ceiling) to the report",
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="instead of the sweep: hold --soak-users on our server for MINUTES, sampling every server "
        "process's resident memory; reports growth from the first to the last minute",
    )
    parser.add_argument("--soak-users", type=int, default=16, help="users during --soak (default: %(default)s)")
    args = parser.parse_args(argv)
    args.users = sorted(set(_number_list(args.users, "--users")))
    args.rates = sorted(set(_number_list(args.rates, "--rates", float))) if args.rates else None
    if args.open_users is not None and (args.open_users < 1 or not args.rates):
        raise UserError("--open-users N needs --rates and N >= 1")
    if args.p99_bound_ms is not None and not args.p99_bound_ms > 0:
        raise UserError(f"--p99-bound-ms must be > 0, got {args.p99_bound_ms:g}")
    if args.ceiling is None:
        args.ceiling = "run" if args.goals else "none"
    args.mixes = args.mixes or ["1", "16"]
    args.baseline_threads = [_baseline_threads(v) for v in args.baseline_threads.split(",")]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        raise UserError(f"--peers {','.join(unknown)}: unknown; choose from {', '.join(PEERS)}")
    if args.rates and args.soak:
        raise UserError("--soak holds --soak-users closed-loop users; it cannot be used with --rates")
    if args.peers and (args.host or args.soak):
        raise UserError("--peers starts servers on the served artifact; it cannot be used with --host or --soak")
    for mix in args.mixes:
        try:
            parse_n_mix(mix)
        except ValueError as e:
            raise UserError(str(e)) from None
    if args.warmup is None:
        args.warmup = 60.0 if args.soak else 10.0
    if args.duration <= 0 or args.warmup < 0:
        raise UserError("--duration must be > 0 and --warmup >= 0")
    if any(n < 1 for n in args.compare_max_batch):
        raise UserError(f"--compare-max-batch must be >= 1, got {min(args.compare_max_batch)}")
    if args.soak is not None and (args.soak <= 0 or args.soak_users < 1):
        raise UserError("--soak MINUTES must be > 0 and --soak-users >= 1")
    if args.models is not None:
        if args.models < 2:
            raise UserError(f"--models N must be >= 2 (our one-model server is always swept beside it), got {args.models}")
        if args.soak:
            raise UserError("--models adds a sweep of our service serving several models; it cannot be used with --soak")
        if args.rates is None and max(args.users) < args.models:
            raise UserError(
                f"--models {args.models} splits each level's users between {args.models} models: give --users with a level >= {args.models}"
            )
    if args.host:
        args.host = args.host.rstrip("/") if args.allow_non_loopback else check_loopback(args.host)
        if args.compare_max_batch or args.compare_fp32 or args.compare_generator or args.models:
            raise UserError("--compare-* and --models start servers with other settings; they cannot be used with --host")
        if args.soak:
            raise UserError("--soak samples the memory of the server processes it started; it cannot be used with --host")
    elif not (args.artifact / MANIFEST).is_file():
        raise UserError(
            f"no model artifact at {args.artifact} (no {MANIFEST}); export one with `python -m export RUN_DIR --out DIR` "
            "and pass --artifact DIR"
        )
    return args


def describe_machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if shutil.which("lscpu") else []
    fields = dict(line.split(":", 1) for line in lscpu if ":" in line)
    gpu = None
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        gpu = done.stdout.strip().replace("\n", ", ") or None if done.returncode == 0 else None
    return {
        "cpu_model": fields.get("Model name", "unknown CPU").strip(),
        "cores": len(os.sched_getaffinity(0)),
        "lscpu": lscpu[:12],
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "gpu": gpu,
        "load_avg_1m_start": os.getloadavg()[0],
    }


def _git() -> str:
    def out(*cmd):
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = out("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (uncommitted changes)" if out("status", "--porcelain", "--untracked-files=no") else "")


def _versions() -> dict:
    versions = {}
    for name in ("bentoml", "onnxruntime-gpu", "onnxruntime", "locust", "fastapi", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def _model_summary(artifact: Path) -> str:
    try:
        manifest = read_manifest(artifact)
    except ArtifactError:
        return f"{repo_relative(artifact)} (unreadable manifest)"
    m, src = manifest["model"], manifest.get("source", {})
    ngf = src.get("generator", {}).get("ngf")
    return f"{repo_relative(artifact)}: {m['arch']} generator, {m['image_size']}x{m['image_size']}x{m['channels']}, nz {m['nz']}" + (
        f", ngf {ngf}" if ngf else ""
    )


def fp32_artifact(artifact: Path, workdir: Path) -> Path:
    """A copy of the artifact without generator.fp16.onnx (and without its manifest entry): the service then serves fp32 on CUDA."""
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["files"].pop(ONNX_FP16, None)
    out = workdir / "artifact-fp32"
    if out.is_dir():  # made for an earlier n mix
        return out
    out.mkdir(parents=True)
    for name in manifest["files"]:
        shutil.copy2(artifact / name, out / name)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def model_names(count: int) -> list[str]:
    """--models N's names: the default model's, then -2, -3, ... ("dcgan-generator", "dcgan-generator-2")."""
    return [MODEL_NAME, *(f"{MODEL_NAME}-{i}" for i in range(2, count + 1))]


def register_models(artifact: Path, bentoml_home: Path, names: list[str], log_path: Path) -> list[str]:
    """Register `artifact` under each of `names` in the store `bentoml_home` (contract.store, in one subprocess, as
    `python -m contract.store ARTIFACT --name NAME` does); their tags. Idempotent: the same artifact, the same tags."""
    code = "import sys\nfrom contract.store import register\nfor name in sys.argv[2:]:\n    print(register(sys.argv[1], name))\n"
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", code, str(artifact), *names], cwd=REPO, env=env, capture_output=True, text=True)
    log_path.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise UserError(f"registering {artifact} as {', '.join(names)} failed; see {log_path}")
    return done.stdout.split()


def serve_models(artifact: Path, names: list[str], bentoml_home: Path, log_path: Path, env: dict[str, str]):
    """A starter of our service serving `names`, each the artifact registered under that name (registered once)."""

    def start():
        if not bentoml_home.is_dir():
            register_models(artifact, bentoml_home, names, log_path.with_name(log_path.stem + "-register.log"))
        return serve_bentoml(artifact, bentoml_home, log_path, env)

    return start


def plan_targets(args, homes: Path, logs: Path) -> list[Target]:
    if args.host:
        targets = [Target("external", f"server at {args.host}", f"a server started elsewhere, at {args.host}", lambda: existing(args.host))]
    else:
        art = args.artifact

        def ours(name: str, artifact: Path, env: dict[str, str]):
            return lambda: serve_bentoml(artifact, homes / name, logs / f"{name}.log", env)

        targets = [
            Target(
                reporting.OURS,
                "ours (BentoML, adaptive batching)",
                "`bentoml serve service:svc`, settings from the environment (defaults unless DCGAN_* are set)",
                ours(reporting.OURS, art, {}),
            )
        ]
        if args.models:
            names = model_names(args.models)
            name = f"{reporting.MODELS}{args.models}"
            env = {"DCGAN_MODELS": ",".join(names)}
            env.update({"DCGAN_MAX_MODELS": str(args.models)} if args.models > SERVICE_MAX_MODELS else {})
            targets.append(
                Target(
                    name,
                    f"ours, {args.models} models",
                    f"the same service serving {args.models} models, DCGAN_MODELS={env['DCGAN_MODELS']}: the served artifact "
                    f"registered under {args.models} names (same weights), each with its own ONNX Runtime session, queue "
                    "and deadline; each level's users split evenly between them",
                    serve_models(art, names, homes / name, logs / f"{name}.log", env),
                    models=tuple(names),
                )
            )
        for n in sorted(set(args.compare_max_batch)) if not args.soak else []:
            targets.append(
                Target(
                    f"{reporting.MAXBATCH}{n}",
                    "ours, batching off" if n == 1 else f"ours, max batch {n}",
                    f"the same service with DCGAN_MAX_BATCH={n}: "
                    + (
                        "each request its own generator call and ONNX Runtime call"
                        if n == 1
                        else f"at most {n} images per ONNX Runtime call"
                    ),
                    ours(f"{reporting.MAXBATCH}{n}", art, {"DCGAN_MAX_BATCH": str(n)}),
                )
            )
        if args.compare_generator and not args.soak:
            other = "inprocess" if os.environ.get("DCGAN_GENERATOR", "").strip().lower() == "service" else "service"
            targets.append(
                Target(
                    f"{reporting.OURS}-{other}",
                    f"ours, generator {other}",
                    f"the same service with DCGAN_GENERATOR={other}"
                    + (": the model in a generator service of its own" if other == "service" else ": the model in the entry worker"),
                    ours(f"{reporting.OURS}-{other}", art, {"DCGAN_GENERATOR": other}),
                )
            )
        if args.compare_fp32 and not args.soak:
            targets.append(
                Target(
                    f"{reporting.OURS}-fp32",
                    "ours, fp32",
                    "the same service on the artifact without generator.fp16.onnx (fp32 on CUDA)",
                    lambda: serve_bentoml(fp32_artifact(art, homes), homes / "fp32", logs / "bentoml-fp32.log", {}),
                )
            )
    ort_threads = int(os.environ["DCGAN_ORT_THREADS"]) if os.environ.get("DCGAN_ORT_THREADS") else None  # as ours
    if "mosec" in args.peers:
        targets.append(
            Target(
                "mosec",
                "Mosec (max batch 128, 1 ms wait)",
                f"`python -m loadtest.mosec_server {repo_relative(args.artifact)}`: Mosec's Rust HTTP front, one batched "
                "Python worker (max_batch_size 128, max_wait_time 1 ms, its shortest), the service's work per request",
                lambda: serve_mosec(args.artifact, logs / "mosec.log", ort_threads),
            )
        )
    if "triton" in args.peers:
        targets.append(
            Target(
                "triton",
                "Triton (PyTriton, dynamic batching)",
                f"`python -m loadtest.triton_server {repo_relative(args.artifact)}` in .venv-peers/triton: Triton Inference "
                "Server's HTTP front, dynamic batching (max batch 128, no queue delay) into one Python model, the "
                "service's work per request, answered over the Open Inference Protocol",
                lambda: serve_triton(args.artifact, logs / "triton.log", ort_threads, progress=say),
                v2_model=TRITON_MODEL,
            )
        )
    if args.baseline is not None and not args.soak:
        model = Path(args.baseline) if args.baseline else args.artifact
        for threads in dict.fromkeys(args.baseline_threads):
            suffix, option = ("", "") if threads is None else (f"-t{threads}", f" --threads {threads}")
            targets.append(
                Target(
                    reporting.BASELINE + suffix,
                    "baseline (FastAPI + torch eager, "
                    + ("torch's threads)" if threads is None else f"{threads} thread{'s' * (threads > 1)})"),
                    f"`python -m loadtest.baseline {repo_relative(model)}{option}`: one process, the model run inline in an async "
                    "handler, one request at a time, no batching",
                    lambda threads=threads, suffix=suffix: serve_baseline(model, logs / f"baseline{suffix}.log", threads),
                )
            )
    return targets


def _process_role(p: psutil.Process) -> str:
    """What a server process is: the BentoML service a worker runs, the `bentoml serve` arbiter, or the server."""
    with contextlib.suppress(psutil.Error):
        cmd = p.cmdline()
        if "--service-name" in cmd:
            return f"worker {cmd[cmd.index('--service-name') + 1]}"
        return "bentoml serve" if "bentoml" in cmd else "server"
    return "process"


def _process_name(p: psutil.Process) -> str:
    return f"{_process_role(p)} (pid {p.pid})"


def _cpu_seconds(server: Server) -> dict[str, float]:
    """CPU seconds used so far by each of the server's processes, by role."""
    seconds: dict[str, float] = {}
    for p in server.processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            role = _process_role(p)
            seconds[role] = seconds.get(role, 0.0) + t.user + t.system
    return seconds


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy so far (every core, every process)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def measure(
    server: Server,
    level: LoadLevel,
    n_mix: str,
    seconds: float,
    prefix: Path,
    sample: Callable[[], None] | None = None,
    v2_model: str = "",
    models: tuple[str, ...] = (),
) -> dict:
    """One level, with what the server itself says around it: batch sizes and durations (/metrics), CPU time; with
    `models`, the users split between them and each model's own figures under "models"."""
    scrape_before = prometheus.parse(http_get(f"{server.url}/metrics")[1].decode(errors="replace"))
    cpu_before, load_before, busy_before = _cpu_seconds(server), os.getloadavg()[0], _busy_seconds()
    stats: LevelStats = run_level(server.url, level, n_mix, seconds, prefix, sample, v2_model=v2_model, models=models)
    cpu_after, busy = _cpu_seconds(server), _busy_seconds() - busy_before
    scrape_after = prometheus.parse(http_get(f"{server.url}/metrics")[1].decode(errors="replace"))
    cpu_by_role = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
    cpu = sum(cpu_by_role.values()) if cpu_by_role else None
    figures = stats.to_dict()
    per_request = 1000 / figures["requests"] if figures["requests"] else None
    return {
        "n_mix": n_mix,
        "users": level.users,
        "ignore_retry_after": level.ignore_retry_after,
        **figures,
        **prometheus.level_figures(scrape_before, scrape_after),
        "server_cpu_s": cpu,
        # CPU that neither the server nor locust used (other processes, this script): a disturbed level shows here.
        "other_cpu_s": max(busy - cpu - (stats.locust_cpu_s or 0.0), 0.0) if cpu is not None else None,
        # CPU per request: a figure that other processes on the machine disturb far less than throughput.
        "server_cpu_ms_per_request": cpu * per_request if cpu is not None and per_request else None,
        "server_cpu_ms_per_request_by_process": {role: c * per_request for role, c in cpu_by_role.items()} if per_request else {},
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": os.getloadavg()[0],
        **({"models": per_model(prefix, level, models)} if models else {}),
    }


PER_MODEL_KEYS = ("requests", "ok", "refused", "failed", "requests_per_s", "images_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms")


def per_model(prefix: Path, level: LoadLevel, models: tuple[str, ...]) -> dict[str, dict]:
    """Each model's share of a level, over the level's window: its users (closed loop: user i asks model i mod M;
    open loop: None, request k asks model k mod M), counts, rates and latency of its ok answers, why any failed."""
    out = {}
    for i, name in enumerate(models):
        figures = parse_level(prefix.resolve(), model=name).to_dict()
        out[name] = {
            "users": None if level.rate else len(range(i, level.users, len(models))),
            **{key: figures[key] for key in PER_MODEL_KEYS},
            "ok_per_s": figures["outcomes"]["ok"]["per_s"],
            "failure_reasons": figures["failure_reasons"],
        }
    return out


def soak(server: Server, args, out: Path) -> dict:
    """Hold a moderate load for --soak minutes; sample every server process's RSS; growth = last minute / first minute - 1."""
    samples: list[dict] = []
    start = time.monotonic()

    def sample() -> None:
        t = time.monotonic() - start
        for p in server.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                samples.append({"t_s": round(t, 1), "name": _process_name(p), "rss_bytes": p.memory_info().rss})

    say(f"soak: {args.soak_users} users, n mix {args.mixes[0]}, {args.soak:g} min")
    level = measure(server, LoadLevel(args.soak_users), args.mixes[0], args.soak * 60, out / "locust" / "soak", sample)
    with open(out / "soak_rss.csv", "w") as f:
        f.write("t_s,process,rss_bytes\n" + "".join(f"{s['t_s']},{s['name']},{s['rss_bytes']}\n" for s in samples))
    reporting.plot_soak(samples, out / "soak_rss.png")
    window = min(60.0, args.soak * 60 / 4)  # "first and last minute"; a short soak compares its first and last quarter

    def mean_mib(name: str | None, lo: float, hi: float) -> float:
        times = sorted({s["t_s"] for s in samples if lo <= s["t_s"] <= hi})
        totals = [sum(s["rss_bytes"] for s in samples if s["t_s"] == t and (name is None or s["name"] == name)) for t in times]
        return sum(totals) / len(totals) / 2**20 if totals else float("nan")

    def late_slope(name: str | None) -> float:
        """Least-squares MiB per minute over the second half: a leak keeps climbing after start-up growth has settled."""
        times = sorted({s["t_s"] for s in samples if s["t_s"] >= end / 2})
        points = [(t / 60, mean_mib(name, t, t)) for t in times]
        if len(points) < 2:
            return float("nan")
        mx, my = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
        var = sum((x - mx) ** 2 for x, _ in points)
        return sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")

    end = max((s["t_s"] for s in samples), default=0.0)
    first = lambda name: mean_mib(name, 0, window)  # noqa: E731
    last = lambda name: mean_mib(name, end - window, end)  # noqa: E731
    processes = [
        {"name": n, "first_mib": first(n), "last_mib": last(n), "growth": last(n) / first(n) - 1, "late_slope_mib_per_min": late_slope(n)}
        for n in sorted({s["name"] for s in samples})
    ]
    return {
        "minutes": args.soak,
        "users": args.soak_users,
        "n_mix": args.mixes[0],
        "interval_s": SOAK_INTERVAL_S,
        "window_s": window,
        "warmup_s": args.warmup,
        "first_mib": first(None),
        "last_mib": last(None),
        "growth": last(None) / first(None) - 1,
        "late_slope_mib_per_min": late_slope(None),
        "processes": processes,
        "level": level,
    }


def get_ceiling(args, out: Path) -> dict | None:
    if args.ceiling == "none" or args.host:
        return None
    if args.ceiling == "run":
        path = out / "bench.json"
        say("ceiling: python -m loadtest.backend_bench (no server running yet) ...")
        argv = [sys.executable, "-m", "loadtest.backend_bench", "--artifact", str(args.artifact), "--seconds", "1", "--json", str(path)]
        with open(out / "logs" / "bench.log", "wb") as log:
            done = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise UserError(f"the benchmark failed; see {out / 'logs' / 'bench.log'}")
    else:
        path = Path(args.ceiling)
    try:
        bench = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--ceiling {path}: cannot read a loadtest.backend_bench JSON file ({e})") from None
    from loadtest.backend_bench import table

    return {**bench, "table": table(bench)}


def load_levels(args) -> list[LoadLevel]:
    """The sweep's levels, ascending: closed-loop user counts, or open-loop rates each with its pool of users."""
    if not args.rates:
        return [LoadLevel(users, ignore_retry_after=args.ignore_retry_after) for users in args.users]

    def pool(rate: float) -> int:
        return args.open_users or min(max(math.ceil(rate * args.p99_bound_ms / 1000), MIN_OPEN_USERS), MAX_OPEN_USERS)

    return [LoadLevel(pool(rate), rate) for rate in args.rates]


def target_levels(args, target: Target) -> list[LoadLevel]:
    """load_levels, less (for a server of several models) the closed-loop levels with fewer users than models, noted."""
    levels = load_levels(args)
    if not target.models:
        return levels
    few = [lv.users for lv in levels if not lv.rate and lv.users < len(target.models)]
    note = f"skipped, fewer users than its {len(target.models)} models: " + ", ".join(reporting.users(u) for u in few)
    if few and note not in target.notes:
        target.notes.append(note)
    return [lv for lv in levels if lv.rate or lv.users >= len(target.models)]


def describe_models(lv: dict) -> list[str]:
    """The console lines of a level's models (--models), one each, under describe_level's line."""
    lines = []
    for name, m in (lv.get("models") or {}).items():
        who = "1/M of the requests" if m["users"] is None else reporting.users(m["users"])
        lines.append(
            f"  model {name} ({who}): {m['images_per_s']:,.0f} images/s; ok {m['ok']:,} (p50 {reporting.ms(m['p50_ms'])}, "
            f"p99 {reporting.ms(m['p99_ms'])}), refused {m['refused']:,}, failed {m['failed']:,}"
        )
    return lines


def describe_level(name: str, lv: dict) -> str:
    """The console line of one level: its load, then each outcome's count and latency."""
    o = lv["outcomes"]
    load = reporting.users(lv["users"])
    if lv.get("target_rate"):
        load = f"{lv['target_rate']:g} req/s (sent {lv['sent_per_s']:.1f}/s, {reporting.users(lv['users'])})"
    line = (
        f"{name}: n {lv['n_mix']}, {load}: {lv['images_per_s']:,.0f} images/s; "
        f"ok {o['ok']['count']:,} (p50 {reporting.ms(o['ok']['p50_ms'])}, p99 {reporting.ms(o['ok']['p99_ms'])})"
    )
    for outcome in ("refused", "failed"):
        line += f", {outcome} {o[outcome]['count']:,}" + (f" (p99 {reporting.ms(o[outcome]['p99_ms'])})" if o[outcome]["count"] else "")
    other = lv.get("other_cpu_s")
    other = f", other processes {other / lv['window_s']:.2f} cores" if other is not None and lv["window_s"] else ""
    return line + f"; load avg {lv['load_avg_1m_before']:.1f}{other}"


def sweep_target(target: Target, args, out: Path, on_start: Callable[[Server], None], levels: list[dict]) -> None:
    """Every n mix at every load level, ascending. Each mix gets a freshly started server: BentoML's dispatcher
    remembers the mean queueing wait it saw under load and delays lone requests by about that much, forgetting
    only 5% every 5 s, so a mix's low levels must not inherit the previous mix's saturation. Appends to `levels`
    as it goes, so an interrupted run still reports what it measured."""
    for mix in args.mixes:
        say(f"{target.name}: starting (n mix {mix})")
        with target.start() as server:
            on_start(server)
            levels_here = target_levels(args, target)
            if args.warmup:
                prefix = out / "locust" / f"{target.name}_n{_mix_tag(mix)}_warmup"
                run_level(server.url, levels_here[0], mix, args.warmup, prefix, v2_model=target.v2_model, models=target.models)
            for level in levels_here:
                tag = f"r{level.rate:g}" if level.rate else f"u{level.users}"
                prefix = out / "locust" / f"{target.name}_n{_mix_tag(mix)}_{tag}"
                lv = measure(server, level, mix, args.duration, prefix, v2_model=target.v2_model, models=target.models)
                say(describe_level(target.name, lv))
                for line in describe_models(lv):
                    say(line)
                levels.append(lv)


def _mix_tag(mix: str) -> str:
    """A file-name-safe form of an n mix: "1:3,16:1" -> "1w3+16w1"."""
    return mix.replace(":", "w").replace(",", "+").replace(" ", "")


def write_report(report: dict, out: Path, goals: bool) -> None:
    report["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    report["capacity"] = reporting.capacity(report)
    report["goals"] = reporting.goals(report) if goals else None
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(reporting.markdown(report))
    if any(t["levels"] for t in report["targets"]):
        reporting.plot_capacity(report, out / "capacity.png")
        reporting.plot_sweep(report, out / "sweep.png")


def deadline_bound(status: int, body: bytes, url: str) -> dict:
    """The capacity's latency bound from a server's GET /info: its limits.deadline_ms, or the default where it has none."""
    try:
        deadline = json.loads(body)["limits"]["deadline_ms"] if status == 200 else None
    except (ValueError, KeyError, TypeError):
        deadline = None
    if isinstance(deadline, int | float) and deadline > 0:
        return {"p99_ms": float(deadline), "from": "the server's deadline, /info limits.deadline_ms"}
    why = f"HTTP {status}" if status != 200 else "no limits.deadline_ms"
    return {"p99_ms": float(DEFAULT_BOUND_MS), "from": f"the service's default deadline ({url}/info: {why})"}


def _interrupt_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C does: servers are stopped and the partial report is written."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@cli_main
def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    _interrupt_on_sigterm()
    out = args.out or REPO / "out" / f"loadtest-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    report = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": reporting.command_line("loadtest.run", argv),
        "machine": describe_machine(),
        "git": _git(),
        "versions": _versions(),
        "model": args.host or _model_summary(args.artifact),
        "settings": {
            "users": args.users,
            "rates": args.rates,
            "mixes": args.mixes,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "ignore_retry_after": args.ignore_retry_after,
            "models": args.models,
        },
        "bound": {"p99_ms": args.p99_bound_ms, "from": "--p99-bound-ms"} if args.p99_bound_ms else None,
        "targets": [],
        "ceiling": None,
        "soak": None,
        "notes": [],
    }
    say(f"writing to {out}; load average now {report['machine']['load_avg_1m_start']:.1f} on {report['machine']['cores']} cores")
    try:
        report["ceiling"] = get_ceiling(args, out)
        with tempfile.TemporaryDirectory(prefix="loadtest-bentoml-") as homes:
            provider = None  # what our service runs on, from its /info

            def on_start(target: Target, server: Server) -> None:
                nonlocal provider
                status, body = http_get(f"{server.url}/info")
                if report["bound"] is None:  # the first server's own deadline, else the service's default
                    report["bound"] = deadline_bound(status, body, server.url)
                    args.p99_bound_ms = report["bound"]["p99_ms"]
                if status != 200 or target.notes:
                    return
                described = json.loads(body)
                provider = described.get("provider") if target.name == reporting.OURS else provider
                target.notes.append(
                    f"provider {described.get('provider')}, ORT threads {described.get('ort_threads')}, "
                    f"batching {described.get('batching')}, model {described.get('model')}"
                )
                if target.models:
                    tags = [m.get("tag") for m in described.get("models", [])]
                    target.notes.append(f"models loaded: {', '.join(map(str, tags))} (the first is the default)")

            for target in plan_targets(args, Path(homes), out / "logs"):
                if target.name == f"{reporting.OURS}-fp32" and provider != CUDA:
                    report["notes"].append(f"--compare-fp32: skipped, our service runs on {provider}; it serves fp16 only on CUDA.")
                    continue
                entry = {"name": target.name, "label": target.label, "description": target.description, "notes": target.notes, "levels": []}
                report["targets"].append(entry)
                if args.soak:
                    say(f"{target.name}: starting")
                    with target.start() as server:
                        on_start(target, server)
                        if args.warmup:
                            run_level(server.url, LoadLevel(args.soak_users), args.mixes[0], args.warmup, out / "locust" / "soak_warmup")
                        report["soak"] = soak(server, args, out)
                else:
                    sweep_target(target, args, out, lambda server, t=target: on_start(t, server), entry["levels"])
    except KeyboardInterrupt:
        report["interrupted"] = True
        say("interrupted: stopping servers, writing the partial report")
        raise
    finally:
        write_report(report, out, args.goals)
        for line in reporting.capacity_lines(report):
            say(line)
        for line in reporting.models_table(report):
            say(line)
        say(f"report: {out / 'report.md'}" + (f", plot: {out / 'capacity.png'}" if (out / "capacity.png").exists() else ""))


if __name__ == "__main__":
    main()
