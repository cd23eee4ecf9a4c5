"""One load level: run locust headless as a subprocess, then read what it measured, per outcome.

    stats = run_level(url, LoadLevel(users=32), n_mix="1", seconds=30, prefix=out / "locust" / "ours_n1_u32")
    stats = run_level(url, LoadLevel(users=64, rate=200), ...)   # open loop: 200 requests/s due on a schedule

Locust spawns every user within a second, resets its statistics once they are all running (so the
ramp is not measured), runs for `seconds`, then lets each user finish its request in flight. The
locustfile names each request by its outcome and n ("ok /sample n=16", "refused /sample n=1", ...);
locust's final `PREFIX.json` holds every name's count and latency histogram (milliseconds, rounded
by locust to 2 significant digits above 100 ms), from which each outcome's percentiles are computed.
`PREFIX_schedule.json` (written by the locustfile) holds when the measured window began and ended
and, in open loop, how many requests were sent.

    stats = run_level(url, LoadLevel(32), "1", 30, prefix, models=("a", "b"))   # users split between two models
    parse_level(prefix, model="a")                                              # model a's share of that level

With `models`, the locustfile names requests "OUTCOME ROUTE model=NAME n=N"; parse_level reads the whole
level, or one model's requests over the same window.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from common.cli import UserError
from common.paths import REPO_ROOT
from loadtest.response_checks import FAILED, OK, OUTCOMES, REFUSED

REPO = REPO_ROOT

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STOP_TIMEOUT_S = 10  # users finish the request in flight when time is up: a cut-off request is not a failure
# The locustfile names requests "OUTCOME ROUTE n=N", or "OUTCOME ROUTE model=NAME n=N" when it asks for models.
NAME = re.compile(r"^(ok|refused|failed) (.*?)(?: model=(\S+))? n=(\d+)$")


@dataclass(frozen=True)
class LoadLevel:
    """What one level offers: `users` concurrent users; with `rate`, requests/s due on a fixed schedule (open loop)."""

    users: int
    rate: float | None = None
    ignore_retry_after: bool = False  # closed loop: send again at once after a refusal

    def describe(self) -> str:
        return f"{self.rate:g} req/s ({self.users} users)" if self.rate else f"{self.users:>3} users"


@dataclass(frozen=True)
class Outcome:
    """Requests of one outcome at one level: count, rate over the window, latency in ms (None without requests)."""

    count: int
    per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None


@dataclass(frozen=True)
class LevelStats:
    """What locust measured at one load level, rates per second over the measured window."""

    ok: Outcome  # HTTP 200, a well-formed body
    refused: Outcome  # 429/503 with Retry-After: the server shedding load by design
    failed: Outcome  # anything else: another status, a connection error, a body that does not check out
    requests_per_s: float  # answers of every outcome
    images_per_s: float  # images in ok answers
    mean_n: float  # images per request, from the mix actually sent
    window_s: float  # from the moment every user ran to the last answer
    failure_reasons: list[dict]  # [{"error": ..., "occurrences": ...}], most frequent first
    target_rate: float | None = None  # open loop: the requests/s asked for
    sent_per_s: float | None = None  # open loop: requests/s locust sent before time was up (its achieved rate)
    locust_cpu_s: float | None = None  # CPU seconds locust itself used (it shares the machine's cores)

    def to_dict(self) -> dict:
        """Flat figures for the report: counts per outcome, the ok outcome's latency as p50_ms..., all of it under `outcomes`."""
        d = asdict(self)
        outcomes = {name: d.pop(name) for name in OUTCOMES}
        return {
            **d,
            "requests": sum(o["count"] for o in outcomes.values()),
            **{name: o["count"] for name, o in outcomes.items()},
            **{key: outcomes[OK][key] for key in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms")},
            "outcomes": outcomes,
        }


def percentile(histogram: Counter, q: float) -> float | None:
    """The smallest value with at least q of the observations at or below it."""
    total = sum(histogram.values())
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= q * total:
            return float(value)
    return None  # no observations


def _outcome(entries: list[dict], window: float) -> Outcome:
    histogram: Counter = Counter()
    for e in entries:
        histogram.update({int(float(ms)): count for ms, count in e["response_times"].items()})
    count = sum(e["num_requests"] for e in entries)
    return Outcome(
        count=count,
        per_s=count / window if window > 0 else 0.0,
        p50_ms=percentile(histogram, 0.50),
        p95_ms=percentile(histogram, 0.95),
        p99_ms=percentile(histogram, 0.99),
        mean_ms=sum(e["total_response_time"] for e in entries) / count if count else None,
        max_ms=max((float(e["max_response_time"]) for e in entries if e["num_requests"]), default=None),
    )


def request_model(name: str) -> str | None:
    """The model a request name asked for ("ok /sample model=a n=1" -> "a"), None if it names none."""
    match = NAME.match(name)
    return match.group(3) if match else None


def parse_level(prefix: Path, model: str | None = None) -> LevelStats:
    """Read locust's PREFIX.json and PREFIX_failures.csv and the locustfile's PREFIX_schedule.json: the whole level,
    or with `model` only the requests that asked for that model (rates over the level's whole window)."""
    try:
        entries = json.loads(Path(f"{prefix}.json").read_text())
        schedule = json.loads(Path(f"{prefix}_schedule.json").read_text())
        with open(f"{prefix}_failures.csv", newline="") as f:
            reasons = [
                {"error": r["Error"], "occurrences": int(r["Occurrences"])}
                for r in csv.DictReader(f)
                if model is None or request_model(r["Name"]) == model
            ]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read locust's results {prefix}.json, _schedule.json, _failures.csv ({e})") from None
    by_outcome: dict[str, list[dict]] = {name: [] for name in OUTCOMES}
    ok_images = sent_images = requests = 0
    last = max((e["last_request_timestamp"] or 0 for e in entries), default=0)  # the level's, also for one model
    for e in entries:
        match = NAME.match(e["name"])
        if match is None:
            raise UserError(f"{prefix}.json: request name {e['name']!r} is not 'OUTCOME ROUTE n=N' (not from loadtest/locustfile.py?)")
        if model is not None and match.group(3) != model:
            continue
        outcome, n = match.group(1), int(match.group(4))
        by_outcome[outcome].append(e)
        requests += e["num_requests"]
        sent_images += n * e["num_requests"]
        ok_images += n * e["num_requests"] if outcome == OK else 0
    window = max(last, schedule["window_end"]) - schedule["window_start"]
    per_s = lambda count: count / window if window > 0 else 0.0  # noqa: E731
    reasons.sort(key=lambda r: -r["occurrences"])
    return LevelStats(
        ok=_outcome(by_outcome[OK], window),
        refused=_outcome(by_outcome[REFUSED], window),
        failed=_outcome(by_outcome[FAILED], window),
        requests_per_s=per_s(requests),
        images_per_s=per_s(ok_images),
        mean_n=sent_images / requests if requests else 0.0,
        window_s=window,
        failure_reasons=reasons[:5],
        target_rate=schedule["rate"],
        sent_per_s=None if schedule["sent"] is None else schedule["sent"] / (schedule["window_end"] - schedule["window_start"]),
    )


def locust_argv(
    url: str, level: LoadLevel, n_mix: str, seconds: float, prefix: Path, v2_model: str = "", models: tuple[str, ...] = ()
) -> list[str]:
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
        str(level.users),
        "--spawn-rate",
        str(level.users),
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
        *(["--models", ",".join(models)] if models else []),
        *(["--rate", f"{level.rate:g}"] if level.rate else []),
        *(["--ignore-retry-after"] if level.ignore_retry_after else []),
    ]


def run_level(
    url: str,
    level: LoadLevel,
    n_mix: str,
    seconds: float,
    prefix: Path,
    while_running: Callable[[], None] | None = None,
    interval_s: float = 5.0,
    v2_model: str = "",
    models: tuple[str, ...] = (),
) -> LevelStats:
    """Run one level and return its statistics; its console output goes to PREFIX.log.

    `v2_model`, if given, sends the requests over the Open Inference Protocol to that model (the Triton peer).
    `models`, if given, splits the users between these models of a server of several (parse_level(prefix, model)).
    `while_running`, if given, is called every `interval_s` seconds while locust runs (the soak samples memory with it).
    """
    prefix = prefix.resolve()  # locust runs in the repository root
    prefix.parent.mkdir(parents=True, exist_ok=True)
    limit = seconds + STOP_TIMEOUT_S + 60  # the level, the users' last requests, start-up and shutdown
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(f"{prefix}.log", "wb") as log:
        # cwd: the locustfile imports loadtest.response_checks from the repository root.
        process = subprocess.Popen(
            locust_argv(url, level, n_mix, seconds, prefix, v2_model, models), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
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
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return replace(parse_level(prefix), locust_cpu_s=cpu)
