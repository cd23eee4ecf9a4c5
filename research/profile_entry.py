"""Where the entry worker's event loop spends its time per request: py-spy on a served checkout, under fixed load.

    python -m research.profile_entry                          # this checkout, 32 clients at n=1, 15 s
    python -m research.profile_entry --checkout ../old-rev    # another checkout (git worktree add ../old-rev REV)

Starts `bentoml serve service:svc` from the checkout (its committed default model, a store of its own),
drives it with closed-loop HTTP clients in this process (no think time; a refused request waits its
Retry-After), and records the entry worker with py-spy while counting the requests answered and the CPU
time of every server process. The entry worker's samples are sorted into layers by the innermost frame
that belongs to one, and printed as a table: share of the loop's busy samples and microseconds per
request. The same script measured before and after each change to the request path
(docs/performance.md#where-the-time-goes). Absolute figures on a shared machine are noisy: compare two
checkouts in alternating runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import psutil

from common.cli import OneLineErrorParser, UserError, cli_main
from common.paths import REPO_ROOT
from common.server import bentoml_serve_argv, free_port, running

# Layers, checked innermost frame first: the first frame whose file matches a layer's pattern names the sample's layer.
LAYERS = (
    ("metrics and logs", r"prometheus_client/|service/metrics\.py|service/logs\.py|logging/"),
    ("encoding (PNG, base64, JSON)", r"service/images\.py|service/responses\.py|base64|json/|PIL/"),
    ("latents", r"contract/latents\.py|numpy/random|service/interpolate\.py"),
    ("batching (coalescer, generator call)", r"service/coalesce\.py|service/generators\.py|concurrent/futures"),
    ("parsing and validation", r"service/schema\.py|pydantic|urllib/parse"),
    ("service request handling", r"service/api\.py|service/routes\.py|service/errors\.py|service/v2\.py|service/entry\.py"),
    ("BentoML and Starlette stack", r"_bentoml_impl/|_bentoml_sdk/|bentoml/|starlette/|opentelemetry/|service/bentoml_fixes\.py"),
    ("uvicorn (HTTP parsing, responses)", r"uvicorn/"),
    ("event loop (uvloop: sockets, scheduling, thread hand-offs)", r"asyncio/|uvloop|runners\.py"),
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        m = FRAME.match(frame)
        path = m.group("file") if m else frame
        for name, pattern in LAYERS:
            if re.search(pattern, path):
                return name
    return "other"


def entry_worker(server_pid: int) -> psutil.Process:
    """The `dcgan` service's worker process under the `bentoml serve` process."""
    for child in psutil.Process(server_pid).children(recursive=True):
        if "--service-name dcgan" in " ".join(child.cmdline()):
            return child
    raise UserError("no entry worker (--service-name dcgan) under the server; see its log")


async def drive(url: str, users: int, n: int, stop_at: float, answered: Counter) -> None:
    """Closed-loop clients: each sends its next /sample when the last one is answered, until `stop_at`."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=users)) as session:

        async def user(seed: int) -> None:
            while time.monotonic() < stop_at:
                async with session.post(f"{url}/sample", json={"seed": seed, "n": n}) as r:
                    await r.read()
                    answered[r.status] += 1
                    if r.status in (429, 503):
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                seed += users

        await asyncio.gather(*(user(i) for i in range(users)))


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def profile(checkout: Path, users: int, n: int, seconds: float, warmup: float, workdir: Path) -> dict:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCGAN_")}
    env.update(BENTOML_HOME=str(workdir / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    env.update(DCGAN_DEFAULT_ARTIFACT=str(checkout / "artifacts" / "default"))
    samples_path = workdir / "profile.txt"
    with running(bentoml_serve_argv(port), env, workdir / "serve.log", port, cwd=checkout) as server:
        worker = entry_worker(server.process.pid)
        processes = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
        answered: Counter = Counter()
        py_spy = Path(sys.executable).parent / "py-spy"  # the one the loadtest extra installs beside this Python
        spy = [
            str(py_spy) if py_spy.exists() else "py-spy",
            "record",
            "-p",
            str(worker.pid),
            "-d",
            str(int(seconds)),
            "-r",
            "200",
            "-f",
            "raw",
            "--nonblocking",
        ]

        async def measure() -> tuple[float, float, float]:
            start = time.monotonic()
            load = asyncio.create_task(drive(server.url, users, n, start + warmup + seconds + 1, answered))
            await asyncio.sleep(warmup)
            before, cpu_before, t0 = sum(answered.values()), cpu_seconds(processes), time.monotonic()
            recorder = await asyncio.create_subprocess_exec(
                *spy, "-o", str(samples_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            await asyncio.sleep(seconds)
            done, cpu_after, t1 = sum(answered.values()), cpu_seconds(processes), time.monotonic()
            await recorder.wait()
            await load
            return done - before, cpu_after - cpu_before, t1 - t0

        requests, cpu_s, wall_s = asyncio.run(measure())
    if not samples_path.is_file():
        raise UserError("py-spy wrote no profile (install it: pip install py-spy; it needs ptrace permission)")
    layers, busy = Counter(), 0
    for line in samples_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or not frames[0].startswith("_run_module_as_main"):
            continue  # ONNX Runtime's executor thread and other threads: not the event loop
        layers[layer_of(frames)] += int(count)
        busy += int(count)
    sample_s = 1 / 200
    return {
        "checkout": str(checkout),
        "users": users,
        "n": n,
        "requests_per_s": requests / wall_s,
        "server_cpu_ms_per_request": 1000 * cpu_s / max(requests, 1),
        "loop_busy_share": busy * sample_s / seconds,
        "statuses": dict(answered),
        "layers_us_per_request": {
            name: 1e6 * count * sample_s / max(requests * seconds / wall_s, 1) for name, count in layers.most_common()
        },
        "layers_share": {name: count / max(busy, 1) for name, count in layers.most_common()},
    }


def print_report(report: dict) -> None:
    print(f"checkout {report['checkout']}: {report['users']} clients at n={report['n']}")
    print(f"  {report['requests_per_s']:.0f} requests/s, server CPU {report['server_cpu_ms_per_request']:.2f} ms/request, ", end="")
    print(f"event loop busy {report['loop_busy_share']:.0%}, statuses {report['statuses']}")
    print(f"  {'layer of the entry worker event loop':<58} {'share':>6} {'us/request':>11}")
    for name, share in report["layers_share"].items():
        print(f"  {name:<58} {share:>6.1%} {report['layers_us_per_request'][name]:>11.0f}")


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(prog="python -m research.profile_entry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, default=REPO_ROOT, help="source tree to serve (default: this one)")
    parser.add_argument("--users", type=int, default=32, help="closed-loop clients (default: 32)")
    parser.add_argument("--n", type=int, default=1, help="images per request (default: 1)")
    parser.add_argument("--seconds", type=float, default=15, help="recorded seconds (default: 15)")
    parser.add_argument("--warmup", type=float, default=4, help="seconds of load before recording (default: 4)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    checkout = args.checkout.resolve()
    if not (checkout / "service" / "entry.py").is_file():
        raise UserError(f"--checkout {checkout} has no service/entry.py: give the root of a checkout of this repository")
    if args.users < 1 or args.n < 1 or args.seconds < 1:
        raise UserError("--users, --n and --seconds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="profile-entry-") as tmp:
        report = profile(checkout, args.users, args.n, args.seconds, args.warmup, Path(tmp))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
