"""`python -m loadtest.run`: start the service, sweep concurrent users with locust, write a report.

    python -m loadtest.run --baseline --compare-max-batch 1 --out loadtest/results

For each server (ours; optionally ours with a capped batch size, ours in fp32, the FastAPI
baseline), one after another so they never share the cores: start it on a free loopback port,
wait for /readyz, warm up, then for each n mix and user count run locust headless for a bounded
time. Between levels it scrapes /metrics for BentoML's adaptive batch size histogram. OUT gets
locust's CSVs (locust/), server logs (logs/), bench.json, report.json, report.md and sweep.png.
With --soak MINUTES it instead holds a moderate load on our server and samples the resident
memory of its every process (soak_rss.csv, soak_rss.png).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import shlex
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
from contract.artifact import MANIFEST, ONNX_FP16, ArtifactError, read_manifest
from loadtest import prometheus
from loadtest import report as reporting
from loadtest.locust_run import LevelStats, run_level
from loadtest.peers import TRITON_MODEL, serve_mosec, serve_triton
from loadtest.response_checks import parse_n_mix

SOAK_INTERVAL_S = 5.0
CUDA = "CUDAExecutionProvider"
PEERS = ("mosec", "triton")


@dataclass
class Target:
    name: str  # key in report.json ("bentoml", "bentoml-maxbatch2", "bentoml-fp32", "baseline", "external")
    label: str  # shown in tables and plots
    description: str
    start: Callable[[], AbstractContextManager[Server]]
    notes: list[str] = field(default_factory=list)
    v2_model: str = ""  # load it over the Open Inference Protocol (POST /v2/models/NAME/infer), not POST /sample


def say(message: str) -> None:
    print(message, flush=True)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text!r}: every value must be >= 1")
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
        description="Load-test the DCGAN service with locust: start it (or use --host), sweep concurrent users for\n"
        "each n mix, and write to OUT: locust CSVs, report.json, report.md (throughput, latency percentiles,\n"
        "failures, mean adaptive batch size, share of the in-process ceiling, goal verdicts) and sweep.png.\n"
        "Servers it started are stopped at the end, also on Ctrl-C.",
        epilog="examples:\n"
        "  python -m loadtest.run --users 2 --duration 5 --mix 1 --ceiling none   # a quick look\n"
        "  python -m loadtest.run --baseline --compare-max-batch 1 --out loadtest/results   # the full comparison\n"
        "  python -m loadtest.run --soak 10 --out out/soak   # memory over 10 minutes at moderate load",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--artifact",
        type=Path,
        default=REPO / "artifacts" / "default",
        help="model artifact to serve (default: artifacts/default, the committed model)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: out/loadtest-<UTC time>)")
    parser.add_argument("--users", default="1,4,16,32,64", help="concurrent users per level (default: %(default)s)")
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
        help="also sweep the FastAPI + torch eager baseline (loadtest/baseline.py) serving MODEL, a run dir "
        "or an artifact (default: the served artifact's generator.pt2)",
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
        help="also sweep these peer servers, comma-separated: 'mosec' (loadtest/mosec_server.py) and 'triton' "
        "(PyTriton, loadtest/triton_server.py; its environment .venv-peers/triton is made on first use), each "
        "doing the service's work per request on the served artifact with its own dynamic batching",
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
        default="run",
        metavar="run|none|PATH",
        help="in-process ceiling: run `python -m loadtest.backend_bench` first (default), skip it, or read its --json file",
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
    args.users = sorted(set(_int_list(args.users, "--users")))
    args.mixes = args.mixes or ["1", "16"]
    args.baseline_threads = [_baseline_threads(v) for v in args.baseline_threads.split(",")]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        raise UserError(f"--peers {','.join(unknown)}: unknown; choose from {', '.join(PEERS)}")
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
    if args.host:
        args.host = args.host.rstrip("/") if args.allow_non_loopback else check_loopback(args.host)
        if args.compare_max_batch or args.compare_fp32 or args.compare_generator:
            raise UserError("--compare-* options start servers with other settings; they cannot be used with --host")
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


def measure(
    server: Server, users: int, n_mix: str, seconds: float, prefix: Path, sample: Callable[[], None] | None = None, v2_model: str = ""
) -> dict:
    """One level, with what the server itself says around it: batch sizes and durations (/metrics), CPU time."""
    scrape_before = prometheus.parse(http_get(f"{server.url}/metrics")[1].decode(errors="replace"))
    cpu_before, load_before = _cpu_seconds(server), os.getloadavg()[0]
    stats: LevelStats = run_level(server.url, users, n_mix, seconds, prefix, sample, v2_model=v2_model)
    cpu_after = _cpu_seconds(server)
    scrape_after = prometheus.parse(http_get(f"{server.url}/metrics")[1].decode(errors="replace"))
    cpu_by_role = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
    cpu = sum(cpu_by_role.values()) if cpu_by_role else None
    per_request = 1000 / stats.requests_total if stats.requests_total else None
    return {
        "n_mix": n_mix,
        "users": users,
        **stats.to_dict(),
        **prometheus.level_figures(scrape_before, scrape_after),
        "server_cpu_s": cpu,
        # CPU per request: a figure that other processes on the machine disturb far less than throughput.
        "server_cpu_ms_per_request": cpu * per_request if cpu is not None and per_request else None,
        "server_cpu_ms_per_request_by_process": {role: c * per_request for role, c in cpu_by_role.items()} if per_request else {},
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": os.getloadavg()[0],
    }


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
    level = measure(server, args.soak_users, args.mixes[0], args.soak * 60, out / "locust" / "soak", sample)
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


def sweep_target(target: Target, args, out: Path, on_start: Callable[[Server], None], levels: list[dict]) -> None:
    """Every n mix at every user count, ascending. Each mix gets a freshly started server: BentoML's dispatcher
    remembers the mean queueing wait it saw under load and delays lone requests by about that much, forgetting
    only 5% every 5 s, so a mix's low levels must not inherit the previous mix's saturation. Appends to `levels`
    as it goes, so an interrupted run still reports what it measured."""
    for mix in args.mixes:
        say(f"{target.name}: starting (n mix {mix})")
        with target.start() as server:
            on_start(server)
            if args.warmup:
                prefix = out / "locust" / f"{target.name}_n{_mix_tag(mix)}_warmup"
                run_level(server.url, args.users[0], mix, args.warmup, prefix, v2_model=target.v2_model)
            for users in args.users:
                prefix = out / "locust" / f"{target.name}_n{_mix_tag(mix)}_u{users}"
                lv = measure(server, users, mix, args.duration, prefix, v2_model=target.v2_model)
                say(
                    f"{target.name}: n {mix}, {users:>3} users: {lv['requests_per_s']:8.1f} req/s {lv['images_per_s']:8.0f} "
                    f"images/s  p50 {lv['p50_ms']} p99 {lv['p99_ms']} ms  failures {lv['failures']}  load {lv['load_avg_1m_before']:.1f}"
                )
                levels.append(lv)


def _mix_tag(mix: str) -> str:
    """A file-name-safe form of an n mix: "1:3,16:1" -> "1w3+16w1"."""
    return mix.replace(":", "w").replace(",", "+").replace(" ", "")


def write_report(report: dict, out: Path) -> None:
    report["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    report["goals"] = reporting.goals(report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(reporting.markdown(report))
    if any(t["levels"] for t in report["targets"]):
        reporting.plot_sweep(report, out / "sweep.png")


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
        "command": shlex.join(["python", "-m", "loadtest.run", *argv]),
        "machine": describe_machine(),
        "git": _git(),
        "versions": _versions(),
        "model": args.host or _model_summary(args.artifact),
        "settings": {"users": args.users, "mixes": args.mixes, "duration_s": args.duration, "warmup_s": args.warmup},
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
                if status != 200 or target.notes:
                    return
                described = json.loads(body)
                provider = described.get("provider") if target.name == reporting.OURS else provider
                target.notes.append(
                    f"provider {described.get('provider')}, ORT threads {described.get('ort_threads')}, "
                    f"batching {described.get('batching')}, model {described.get('model')}"
                )

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
                            run_level(server.url, args.soak_users, args.mixes[0], args.warmup, out / "locust" / "soak_warmup")
                        report["soak"] = soak(server, args, out)
                else:
                    sweep_target(target, args, out, lambda server, t=target: on_start(t, server), entry["levels"])
    except KeyboardInterrupt:
        report["interrupted"] = True
        say("interrupted: stopping servers, writing the partial report")
        raise
    finally:
        write_report(report, out)
        say(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
