"""One load level: run locust headless as a subprocess, then read its CSV statistics.

    stats = run_level(url, users=32, n_mix="1", seconds=30, prefix=out / "locust" / "ours_n1_u32")

Locust spawns every user within a second, resets its statistics once they are all running (so the
ramp is not measured), runs for `seconds`, then lets each user finish its request in flight. Its
`PREFIX_stats.csv` is a snapshot written every second; `PREFIX.json` is written at exit and holds
the final counts, so failures in the last second are not missed.
"""

from __future__ import annotations

import csv
import json
import math
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from common.cli import UserError

REPO = Path(__file__).resolve().parents[1]

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STOP_TIMEOUT_S = 10  # users finish the request in flight when time is up: a cut-off request is not a failure
NAME_N = re.compile(r"n=(\d+)$")  # locustfile names requests "/sample n=N"


@dataclass(frozen=True)
class LevelStats:
    """What locust measured at one load level; times in ms, rates per second over the measured window."""

    requests: int  # in the CSV snapshot (the window the rates are computed over)
    failures: int  # over the whole run, from locust's final JSON (>= the snapshot's)
    requests_total: int  # over the whole run, from locust's final JSON
    requests_per_s: float  # all requests, failed ones included
    images_per_s: float  # images in successful responses
    mean_n: float  # images per request, from the mix actually sent
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    window_s: float  # requests / requests_per_s
    failure_reasons: list[dict]  # [{"error": ..., "occurrences": ...}], most frequent first
    locust_cpu_s: float | None = None  # CPU seconds locust itself used (it shares the machine's cores)

    def to_dict(self) -> dict:
        return asdict(self)


def _number(text: str) -> float | None:
    """A CSV cell as a float; locust writes "N/A" where there were no requests."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_stats_csv(path: Path) -> LevelStats:
    """Read locust's PREFIX_stats.csv: the "Aggregated" row for rates and latency, one row per n for images."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    total = next((r for r in rows if r["Name"] == "Aggregated"), None)
    if total is None:
        raise UserError(f"{path} has no Aggregated row: not a locust stats CSV")
    requests = int(total["Request Count"])
    rps = _number(total["Requests/s"]) or 0.0
    ok_images = sent_images = 0
    for row in rows:
        if row["Name"] == "Aggregated":
            continue
        match = NAME_N.search(row["Name"])
        if match is None:
            raise UserError(f"{path}: request name {row['Name']!r} does not end in n=N (was it written by loadtest/locustfile.py?)")
        n, count = int(match.group(1)), int(row["Request Count"])
        sent_images += n * count
        ok_images += n * (count - int(row["Failure Count"]))
    window = requests / rps if rps > 0 else 0.0
    return LevelStats(
        requests=requests,
        failures=int(total["Failure Count"]),
        requests_total=requests,
        requests_per_s=rps,
        images_per_s=ok_images / window if window > 0 else 0.0,
        mean_n=sent_images / requests if requests else 0.0,
        p50_ms=_number(total["50%"]),
        p95_ms=_number(total["95%"]),
        p99_ms=_number(total["99%"]),
        mean_ms=_number(total["Average Response Time"]),
        max_ms=_number(total["Max Response Time"]),
        window_s=window,
        failure_reasons=[],
    )


def read_final(prefix: Path) -> tuple[int, int, list[dict]]:
    """(requests, failures) over the whole run from PREFIX.json, and the failure reasons from PREFIX_failures.csv."""
    entries = json.loads(Path(f"{prefix}.json").read_text())
    requests, failures = sum(e["num_requests"] for e in entries), sum(e["num_failures"] for e in entries)
    with open(f"{prefix}_failures.csv", newline="") as f:
        reasons = [{"error": r["Error"], "occurrences": int(r["Occurrences"])} for r in csv.DictReader(f)]
    reasons.sort(key=lambda r: -r["occurrences"])
    return requests, failures, reasons[:5]


def locust_argv(url: str, users: int, n_mix: str, seconds: float, prefix: Path, v2_model: str = "") -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{math.ceil(seconds)}s",
        "--reset-stats",
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--only-summary",
        "--csv",
        str(prefix),
        "--json-file",
        str(prefix),
        "--n-mix",
        n_mix,
        "--exit-code-on-error",
        "0",
        *(["--v2-model", v2_model] if v2_model else []),
    ]


def run_level(
    url: str,
    users: int,
    n_mix: str,
    seconds: float,
    prefix: Path,
    while_running: Callable[[], None] | None = None,
    interval_s: float = 5.0,
    v2_model: str = "",
) -> LevelStats:
    """Run one level and return its statistics; its console output goes to PREFIX.log.

    `v2_model`, if given, sends the requests over the Open Inference Protocol to that model (the Triton peer).
    `while_running`, if given, is called every `interval_s` seconds while locust runs (the soak samples memory with it).
    """
    prefix = prefix.resolve()  # locust runs in the repository root
    prefix.parent.mkdir(parents=True, exist_ok=True)
    limit = seconds + STOP_TIMEOUT_S + 60  # the level, the users' last requests, start-up and shutdown
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(f"{prefix}.log", "wb") as log:
        # cwd: the locustfile imports loadtest.response_checks from the repository root.
        process = subprocess.Popen(
            locust_argv(url, users, n_mix, seconds, prefix, v2_model), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + limit
        try:
            while True:
                if while_running is not None:
                    while_running()
                step = interval_s if while_running is not None else limit
                try:
                    process.wait(max(min(step, deadline - time.monotonic()), 0.01))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise UserError(f"locust did not finish within {limit:.0f} s; see {prefix}.log") from None
        finally:
            if process.poll() is None:  # Ctrl-C or the time limit: do not leave locust running
                process.kill()
                process.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise UserError(f"locust exited with {process.returncode}; see {prefix}.log")
    stats = parse_stats_csv(Path(f"{prefix}_stats.csv"))
    requests, failures, reasons = read_final(prefix)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return replace(
        stats,
        requests_total=max(requests, stats.requests),
        failures=max(failures, stats.failures),
        failure_reasons=reasons,
        locust_cpu_s=cpu,
    )
