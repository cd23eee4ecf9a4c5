"""`python -m loadtest.swap`: how long a version swap takes under load, and whether any answer failed or came from
another version than the one it names.

    python -m loadtest.swap                                        # the committed model and a second version made here
    python -m loadtest.swap --swaps 6 --clients 16 --out loadtest/results/models/swap   # this project's measurement
    python -m loadtest.swap --other ARTIFACT_B --interval 3        # your own second version

It starts `bentoml serve service:svc` (DCGAN_* settings from the environment pass through) with two versions of
one name in a fresh model store: version A (--artifact, the one served at start) and version B (--other; by default
an untrained generator of A's architecture and size, seeded, exported here with the real exporter, so it loads like
A but draws other images), and an API key (DCGAN_API_KEY). --clients closed-loop clients (aiohttp, in this process)
ask POST /sample for n images of seeds from a fixed pool; every --interval seconds the name is swapped to the other
version (A -> B -> A ...) with POST /v2/repository/models/NAME/load. Every answer's images are compared with the
images its reported version (the answer's `model` field, name:version) draws for that seed, computed here with
ONNX Runtime from each version's artifact.

Per swap: the admin request's duration (and the load time the server reports), the time from sending it to the
first answer from the new version, the last answer from the old one (from the admin's 200; the requests admitted
before the switch finish on the old version), old-version answers to requests sent after the 200 (0 with one
entry worker), and the answers, p99 and failures while the swap ran. Whole run: failed requests (must be 0) and
answers whose images do not match their reported version (must be 0). OUT gets report.md, report.json and the
server's log (logs/).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np

from common.cli import Failed, OneLineErrorParser, UserError, cli_main
from common.files import repo_relative
from common.server import REPO, http_get, serve_bentoml
from contract.artifact import MANIFEST, MODEL_NAME, ONNX, ArtifactError, read_manifest
from loadtest import report as reporting
from loadtest.response_checks import problem_with, retry_after_s

TIMEOUT_S = 30.0  # a client's patience for one answer
ADMIN_TIMEOUT_S = 120.0  # the admin load's: hashes, session, warm-up and golden outputs of a large model
SETTLE_S = 1.0  # after a swap's 200, answers are still the swap's (the old version's admitted requests finish)
VERSION_SEED = 1  # the made version B's weights seed
WEIGHT_SCALE = 2.0  # B's conv weights x this over the DCGAN init: its images then vary with the seed (std ~19 levels)
SET_HERE = ("DCGAN_MODEL", "DCGAN_MODELS", "DCGAN_DEFAULT_ARTIFACT", "DCGAN_API_KEY")  # the server's settings this run sets
IDENTICAL, WITHIN, MISMATCH = "identical", "within tolerance", "mismatch"


@dataclass(slots=True)
class Answer:
    """One request of the load: when it was sent and answered (monotonic s), what came back, how its images checked."""

    sent: float
    answered: float
    status: str  # the HTTP status, or the exception's name when none came
    tag: str | None = None  # the answer's model (name:version)
    check: str | None = None  # IDENTICAL, WITHIN or MISMATCH; None when not a 200 or not checked
    level_diff: int | None = None  # the largest pixel difference from the reported version's images
    outcome: str = "failed"  # ok, refused (429/503 with Retry-After) or failed
    reason: str = ""


@dataclass
class Swap:
    """One admin load under the load: when it was sent and answered (monotonic s) and what the server said."""

    old: str
    new: str
    sent: float
    answered: float
    status: int
    body: dict = field(default_factory=dict)


def say(message: str) -> None:
    print(message, flush=True)


def parse_args(argv):
    parser = OneLineErrorParser(
        prog="python -m loadtest.swap",
        description="Measure version swaps under load: start our service with two versions of one model name in a fresh\n"
        "store (A: --artifact, served at start; B: --other, or an untrained generator of A's architecture made here) and an\n"
        "API key, hold --clients closed-loop clients on POST /sample, and every --interval seconds swap the name to the\n"
        "other version with POST /v2/repository/models/NAME/load. Every answer's images are compared with those its\n"
        "reported version draws for that seed (ONNX Runtime here, from each artifact). OUT gets report.md, report.json and\n"
        "the server's log; the command fails (exit 1) if a swap was refused, a request failed or an answer did not match.",
        epilog="examples:\n"
        "  python -m loadtest.swap --swaps 6 --clients 16 --out loadtest/results/models/swap   # this project's measurement\n"
        "  python -m loadtest.swap --swaps 2 --interval 2 --clients 4   # a quick look\n"
        "  DCGAN_WORKERS=2 python -m loadtest.swap   # two entry workers: the second follows the first's swap before the 200\n\n"
        "Per swap it reports the admin request's duration, the time to the first answer from the new version, the last\n"
        "answer from the old one, old-version answers to requests sent after the swap's 200, and the p99 while it ran;\n"
        "for the whole run failed requests and answers whose images do not match their reported version (both must be 0).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--artifact", type=Path, default=REPO / "artifacts" / "default", help="version A, served at start (default: artifacts/default)"
    )
    parser.add_argument(
        "--other",
        type=Path,
        metavar="ARTIFACT",
        help="version B: another artifact of the same model name (default: an untrained generator of A's architecture "
        "and size, exported here in a temporary folder, about 15 s)",
    )
    parser.add_argument("--swaps", type=int, default=6, help="swaps, alternating A -> B -> A ... (default: %(default)s)")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds of steady load before and after each swap (default: %(default)s)"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients (default: %(default)s)")
    parser.add_argument("-n", type=int, default=1, help="images per request (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=256, help="the pool of seeds the clients ask for, in turn (default: %(default)s)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds at the start not counted in the steady-state figures (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: out/swap-<UTC time>)")
    args = parser.parse_args(argv)
    if args.swaps < 1 or args.clients < 1 or args.n < 1 or args.seeds < 1:
        raise UserError("--swaps, --clients, -n and --seeds must be >= 1")
    if not args.interval > 0 or args.warmup < 0 or args.warmup >= args.interval:
        raise UserError(f"--interval must be > 0 and --warmup in [0, --interval), got {args.interval:g} and {args.warmup:g}")
    for flag, path in (("--artifact", args.artifact), ("--other", args.other)):
        if path is not None and not (path / MANIFEST).is_file():
            raise UserError(f"{flag} {path}: no model artifact there (no {MANIFEST}); export one with `python -m export RUN_DIR --out DIR`")
    return args


# --- the two versions ---------------------------------------------------------------------------------------------


def make_version(artifact: Path, workdir: Path, log_path: Path) -> Path:
    """Version B: an untrained generator of `artifact`'s architecture and size (its manifest's source.generator),
    seeded, exported with `python -m export` (every parity check, golden outputs): it loads like A, draws other images."""
    try:
        config = read_manifest(artifact).get("source", {}).get("generator")
    except ArtifactError as e:
        raise UserError(f"--artifact {artifact}: {e}") from None
    if not config:
        raise UserError(f"{artifact}/{MANIFEST} has no source.generator to build a second version from; pass --other ARTIFACT")
    run_dir, out = workdir / "run-b", workdir / "artifact-b"
    steps = (
        ["-m", "training.untrained", str(run_dir), "--config", json.dumps(config)]
        + ["--seed", str(VERSION_SEED), "--scale", str(WEIGHT_SCALE)],
        ["-m", "export", str(run_dir), "--out", str(out), "--no-register"],
    )
    with open(log_path, "w") as log:
        for step in steps:
            if subprocess.run([sys.executable, *step], cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise UserError(f"making version B failed; see {log_path} (or pass --other ARTIFACT)")
    return out


def register_versions(artifacts: list[Path], bentoml_home: Path, log_path: Path) -> list[str]:
    """Register each artifact under MODEL_NAME in the store `bentoml_home`, in order (the last is the newest); the tags."""
    code = "import sys\nfrom contract.store import register\nfor a in sys.argv[2:]:\n    print(register(a, sys.argv[1]))\n"
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    done = subprocess.run([sys.executable, "-c", code, MODEL_NAME, *map(str, artifacts)], cwd=REPO, env=env, capture_output=True, text=True)
    log_path.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise UserError(f"registering the two versions failed; see {log_path}")
    tags = done.stdout.split()
    if len(set(tags)) != len(tags):
        raise UserError(f"--artifact and --other hold the same model ({tags[0]}): give --other another artifact")
    return tags


def references(artifact: Path, seeds: list[int], n: int) -> dict[int, np.ndarray]:
    """Each seed's n images (n, H, W, C) uint8 as the artifact's generator.onnx draws them on ONNX Runtime's CPU."""
    import onnxruntime as ort

    from contract.latents import latents_for_seed
    from contract.onnx_cpu import cpu_session_options
    from contract.pixels import to_nhwc_uint8

    model = read_manifest(artifact)["model"]
    session = ort.InferenceSession(str(artifact / ONNX), cpu_session_options(1), providers=["CPUExecutionProvider"])
    z = np.concatenate([latents_for_seed(seed, n, model["nz"]) for seed in seeds])
    images = to_nhwc_uint8(session.run([model["output"]], {model["input"]: z})[0])
    return {seed: images[i * n : (i + 1) * n] for i, seed in enumerate(seeds)}


def decode(images: list[str]) -> np.ndarray:
    """The base64 PNGs of a /sample answer -> (n, H, W, C) uint8."""
    from PIL import Image

    arrays = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in images]
    return np.stack([a if a.ndim == 3 else a[:, :, None] for a in arrays])


# --- the load and the swaps -----------------------------------------------------------------------------------------


class Load:
    """--clients closed-loop clients on POST /sample; every answer recorded and its images checked."""

    def __init__(self, url: str, key: str, args, refs: dict[str, dict[int, np.ndarray]], tolerance: int) -> None:
        self.url, self.args, self.refs, self.tolerance = url, args, refs, tolerance
        self.headers = {"Authorization": f"Bearer {key}"}
        self.seeds = list(range(args.seeds))
        self.answers: list[Answer] = []
        self.stop = asyncio.Event()

    async def client(self, http: aiohttp.ClientSession, index: int) -> None:
        k = index
        while not self.stop.is_set():
            seed = self.seeds[k % len(self.seeds)]
            k += self.args.clients
            sent = time.monotonic()
            try:
                async with http.post("/sample", json={"seed": seed, "n": self.args.n}, headers=self.headers) as r:
                    status, body, content_type = r.status, await r.read(), r.headers.get("content-type", "")
                    retry_after = r.headers.get("retry-after")
            except (aiohttp.ClientError, TimeoutError) as e:
                self.answers.append(Answer(sent, time.monotonic(), type(e).__name__, reason=str(e)[:200]))
                await asyncio.sleep(0.05)  # no server to answer: do not spin
                continue
            answer = Answer(sent, time.monotonic(), str(status))
            self.answers.append(answer)
            if status == 200:
                self.check(answer, body, content_type, seed)
                continue
            wait = retry_after_s(retry_after)
            if status in (429, 503) and wait is not None:
                answer.outcome, answer.reason = "refused", f"HTTP {status}"
                await asyncio.sleep(wait)
            else:
                answer.reason = f"HTTP {status}: {body[:200].decode(errors='replace')}"

    def check(self, answer: Answer, body: bytes, content_type: str, seed: int) -> None:
        """A 200: well-formed, from MODEL_NAME, and its images those of the version it names (within the golden tolerance)."""
        problem = problem_with(body, content_type, seed, self.args.n, MODEL_NAME)
        if problem is not None:
            answer.reason = problem
            return
        data = json.loads(body)
        answer.outcome, answer.tag = "ok", data["model"]
        expected = self.refs.get(answer.tag, {}).get(seed)
        if expected is None:
            answer.check, answer.reason = MISMATCH, f"answered by {answer.tag}, neither version A nor B"
            return
        got = decode(data["images"])
        if got.shape != expected.shape:
            answer.check, answer.reason = MISMATCH, f"images of shape {got.shape}, {answer.tag} draws {expected.shape}"
            return
        answer.level_diff = int(np.abs(got.astype(np.int16) - expected.astype(np.int16)).max())
        answer.check = IDENTICAL if answer.level_diff == 0 else WITHIN if answer.level_diff <= self.tolerance else MISMATCH
        if answer.check == MISMATCH:
            answer.reason = f"images {answer.level_diff} levels off those of {answer.tag}, seed {seed}"


async def run_swaps(url: str, key: str, tags: list[str], load: Load, args) -> list[Swap]:
    """The load, and the swaps A -> B -> A ... every --interval seconds; the swaps, once the load has stopped."""
    swaps: list[Swap] = []
    async with (
        aiohttp.ClientSession(
            url, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S), connector=aiohttp.TCPConnector(limit=args.clients)
        ) as http,
        # A fresh connection per admin request: an idle kept-alive one may be closed by the server as it is reused.
        aiohttp.ClientSession(
            url, timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S), connector=aiohttp.TCPConnector(force_close=True)
        ) as admin,
    ):
        clients = [asyncio.create_task(load.client(http, i)) for i in range(args.clients)]
        try:
            await asyncio.sleep(args.interval)
            for i in range(args.swaps):
                old, new = tags[i % 2], tags[(i + 1) % 2]
                sent = time.monotonic()
                path = f"/v2/repository/models/{MODEL_NAME}/load"
                try:
                    async with admin.post(path, json={"parameters": {"version": new.split(":")[1]}}, headers=load.headers) as r:
                        status, body = r.status, await r.read()
                except (aiohttp.ClientError, TimeoutError) as e:
                    status, body = 0, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
                swap = Swap(old, new, sent, time.monotonic(), status)
                try:
                    swap.body = json.loads(body)
                except ValueError:
                    swap.body = {"text": body[:200].decode(errors="replace")}
                swaps.append(swap)
                say(f"swap {i + 1}: {old} -> {new}: HTTP {status} in {swap.answered - swap.sent:.2f} s {json.dumps(swap.body)}")
                if status != 200:
                    break
                await asyncio.sleep(args.interval)
        finally:
            load.stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
    return swaps


def run_loop(coroutine):
    """Run `coroutine` on uvloop where it is installed (a base dependency off Windows), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


# --- figures ---------------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q * len(ordered))) - 1))]


def swap_figures(swap: Swap, answers: list[Answer], until: float) -> dict:
    """One swap's figures (seconds; latency in ms) from the answers up to `until` (the next swap, or the run's end)."""
    mine = [a for a in answers if swap.sent <= a.answered < until]
    new_first = min((a.answered for a in mine if a.tag == swap.new), default=None)
    old_last = max((a.answered for a in mine if a.tag == swap.old), default=None)
    during = [a for a in answers if swap.sent <= a.sent <= swap.answered]
    ok_ms = [1000 * (a.answered - a.sent) for a in during if a.outcome == "ok"]
    return {
        "from": swap.old,
        "to": swap.new,
        "status": swap.status,
        "admin_s": swap.answered - swap.sent,
        "server_s": swap.body.get("seconds"),
        "first_new_s": None if new_first is None else new_first - swap.sent,
        "last_old_after_200_s": None if old_last is None else old_last - swap.answered,
        "old_after_200": sum(1 for a in mine if a.tag == swap.old and a.sent > swap.answered),
        "answers_during": len(during),
        "answers_per_s_during": len(during) / (swap.answered - swap.sent) if swap.answered > swap.sent else None,
        "p99_ms_during": pct(ok_ms, 0.99),
        "failed_during": sum(1 for a in during if a.outcome == "failed"),
        "refused_during": sum(1 for a in during if a.outcome == "refused"),
        "body": swap.body,
    }


def figures(answers: list[Answer], swaps: list[Swap], started: float, ended: float, warmup: float) -> dict:
    """The whole run: counts, checks, and the steady state (answers sent outside every swap and its settling second)."""
    windows = [(s.sent, s.answered + SETTLE_S) for s in swaps]
    steady = [a for a in answers if a.sent >= started + warmup and not any(lo <= a.sent <= hi for lo, hi in windows)]
    steady_s = (ended - started - warmup) - sum(min(hi, ended) - lo for lo, hi in windows)
    ok_ms = [1000 * (a.answered - a.sent) for a in steady if a.outcome == "ok"]
    failed = [a for a in answers if a.outcome == "failed"]
    reasons: dict[str, int] = {}
    for a in failed + [a for a in answers if a.check == MISMATCH]:
        reasons[a.reason] = reasons.get(a.reason, 0) + 1
    return {
        "requests": len(answers),
        "ok": sum(1 for a in answers if a.outcome == "ok"),
        "refused": sum(1 for a in answers if a.outcome == "refused"),
        "failed": len(failed),
        "checked": sum(1 for a in answers if a.check is not None),
        "identical": sum(1 for a in answers if a.check == IDENTICAL),
        "within_tolerance": sum(1 for a in answers if a.check == WITHIN),
        "mismatched": sum(1 for a in answers if a.check == MISMATCH),
        "by_version": {tag: sum(1 for a in answers if a.tag == tag) for tag in dict.fromkeys(a.tag for a in answers if a.tag)},
        "steady": {
            "answers_per_s": len(steady) / steady_s if steady_s > 0 else None,
            "p50_ms": pct(ok_ms, 0.50),
            "p99_ms": pct(ok_ms, 0.99),
            "seconds": steady_s,
        },
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:10]),
        "seconds": ended - started,
    }


def timeline(answers: list[Answer], swaps: list[Swap], started: float) -> list[dict]:
    """Per second of the run (by answer time): answers per version, failures, refusals, p99 of ok answers sent then."""
    seconds: dict[int, list[Answer]] = {}
    for a in answers:
        seconds.setdefault(int(a.answered - started), []).append(a)
    swapped = {int(s.sent - started) for s in swaps}
    return [
        {
            "t_s": t,
            "swap_sent": t in swapped,
            "answers": len(group),
            "by_version": {
                tag.split(":")[1]: sum(1 for a in group if a.tag == tag) for tag in dict.fromkeys(a.tag for a in group if a.tag)
            },
            "failed": sum(1 for a in group if a.outcome == "failed"),
            "refused": sum(1 for a in group if a.outcome == "refused"),
            "p99_ms": pct([1000 * (a.answered - a.sent) for a in group if a.outcome == "ok"], 0.99),
        }
        for t, group in sorted(seconds.items())
    ]


SUMMARY = (
    ("admin request (client)", "admin_s", "s"),
    ("load, check and switch (server's `seconds`)", "server_s", "s"),
    ("first answer of the new version, from sending the swap", "first_new_s", "s"),
    ("last answer of the old version, from the swap's 200", "last_old_after_200_s", "s"),
    ("p99 of answers sent while the swap ran", "p99_ms_during", "ms"),
    ("answers/s while the swap ran", "answers_per_s_during", "/s"),
)


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if unit == "ms" else f"{value:,.1f}" if unit == "/s" else f"{value:.3f} s"


def summary(rows: list[dict]) -> list[dict]:
    """Median and max over the swaps of each SUMMARY figure."""
    out = []
    for label, key, unit in SUMMARY:
        values = [r[key] for r in rows if r[key] is not None]
        median = statistics.median(values) if values else None
        out.append({"figure": label, "key": key, "unit": unit, "median": median, "max": max(values) if values else None})
    return out


def tables(report: dict) -> list[str]:
    """The per-swap table, the median/max table and the totals, in markdown (also what the console shows)."""
    lines = [
        "| # | from -> to | admin request | server's load | first new answer | last old answer after the 200 | "
        "old answers to requests sent after the 200 | answers during | p99 during | failed during | refused during |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(report["swaps"], 1):
        short = f"{r['from'].split(':')[1][:6]} -> {r['to'].split(':')[1][:6]}"
        if r["status"] != 200:
            answer = f"HTTP {r['status']}" if r["status"] else "no answer"
            lines.append(f"| {i} | {short} | {_num(r['admin_s'], 's')} | {answer}: {json.dumps(r['body'])[:120]} |" + " - |" * 7)
            continue
        lines.append(
            f"| {i} | {short} | {_num(r['admin_s'], 's')} | {_num(r['server_s'], 's')} | {_num(r['first_new_s'], 's')} | "
            f"{_num(r['last_old_after_200_s'], 's')} | {r['old_after_200']} | {r['answers_during']:,} | "
            f"{_num(r['p99_ms_during'], 'ms')} | {r['failed_during']} | {r['refused_during']} |"
        )
    lines += ["", f"Over the {len(report['swaps'])} swaps:", "", "| figure | median | max |", "|---|---:|---:|"]
    lines += [f"| {s['figure']} | {_num(s['median'], s['unit'])} | {_num(s['max'], s['unit'])} |" for s in report["summary"]]
    t, steady = report["totals"], report["totals"]["steady"]
    lines += [
        f"| steady state (answers sent outside the swaps): answers/s, p50, p99 | {_num(steady['answers_per_s'], '/s')} | "
        f"p50 {_num(steady['p50_ms'], 'ms')}, p99 {_num(steady['p99_ms'], 'ms')} |",
        "",
        "| requests | ok | refused | failed | images checked | identical | within tolerance | mismatched | "
        "old answers to requests sent after a 200 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {t['requests']:,} | {t['ok']:,} | {t['refused']:,} | {t['failed']:,} | {t['checked']:,} | {t['identical']:,} | "
        f"{t['within_tolerance']:,} | {t['mismatched']:,} | {sum(r['old_after_200'] for r in report['swaps'])} |",
    ]
    return lines


def verdicts(report: dict) -> list[str]:
    t, rows, wanted = report["totals"], report["swaps"], report["settings"]["swaps"]
    answered = sum(r["status"] == 200 for r in rows)
    stale = sum(r["old_after_200"] for r in rows)
    met = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    return [
        f"- every swap answered 200: {met(answered == wanted)} ({answered} of {wanted})",
        f"- failed requests: {t['failed']} ({met(t['failed'] == 0)}: 0 wanted)",
        f"- answers whose images are not their reported version's: {t['mismatched']} ({met(t['mismatched'] == 0)}: 0 wanted)",
        f"- old-version answers to requests sent after a swap's 200: {stale} (0 wanted: the swap is answered once every "
        "entry worker serves the new version)",
    ]


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    a, b = report["versions_served"]
    lines = [
        f"# Version swaps under load, {report['created']}",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores available, {m['memory_gib']:.0f} GiB RAM"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f". The load's clients run on the same cores as the server. Load average (1 min) at start {m['load_avg_1m_start']:.1f}.",
        f"Code: git {report['git']}. Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        f"Version A (served at start): `{a['tag']}`, {a['source']}.",
        f"Version B: `{b['tag']}`, {b['source']}.",
        f"Server: `bentoml serve service:svc`, DCGAN_MODEL={a['tag']}, DCGAN_API_KEY set; {report['server']}.",
        f"Command: `{report['command']}`",
        "",
        f"Load: {s['clients']} closed-loop clients (aiohttp on uvloop, one process) asking POST /sample for n={s['n']} "
        f"images of seeds from a pool of {s['seeds']}, each sending its next request when the last is answered (after a "
        f"refusal, its Retry-After). After {s['interval']:g} s, the name is swapped to the other version "
        f'(`POST /v2/repository/models/{MODEL_NAME}/load` with {{"parameters": {{"version": V}}}}), {s["swaps"]} times '
        f"A -> B -> A ..., with {s['interval']:g} s of load after each. Every answer's images are compared with those its "
        "reported version (the answer's `model`) draws for its seed, computed with ONNX Runtime on the CPU from that "
        f"version's artifact (within the manifest's golden tolerance of {report['tolerance_levels']} level counts as a "
        "match; identical bytes are counted apart).",
        "",
        "Columns: *admin request*: the load request's duration at the client; *server's load*: the `seconds` it answered "
        "(hash check, ONNX Runtime session, warm-up, golden outputs; then the switch, and with several entry workers the "
        "others loading it too); *first new answer*: from sending the "
        "swap to the first answer from the new version; *last old answer after the 200*: the requests admitted before the "
        "switch finishing on the old version (negative: all done before the 200); *during*: requests sent while the swap "
        f"ran. The steady state counts answers sent outside every swap and the {SETTLE_S:g} s after it, after a "
        f"{s['warmup']:g} s warm-up.",
        "",
        "## Swaps",
        "",
        *tables(report),
        "",
        "## Verdicts",
        "",
        *verdicts(report),
    ]
    reasons = report["totals"]["reasons"]
    if reasons:
        lines += ["", "Why requests failed or did not match:", ""] + [f"- {n:,} x {why}" for why, n in reasons.items()]
    return "\n".join(lines) + "\n"


@cli_main
def main(argv=None) -> None:
    from loadtest.run import _git, _versions, describe_machine  # the load test's own records of the run

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out = args.out or REPO / "out" / f"swap-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": reporting.command_line("loadtest.swap", argv, SET_HERE),
        "machine": describe_machine(),
        "git": _git(),
        "versions": _versions(),
        "settings": {k: getattr(args, k) for k in ("swaps", "interval", "clients", "n", "seeds", "warmup")},
    }
    say(f"writing to {out}; load average now {report['machine']['load_avg_1m_start']:.1f} on {report['machine']['cores']} cores")
    with tempfile.TemporaryDirectory(prefix="loadtest-swap-") as work:
        work = Path(work)
        other = args.other
        b_source = f"`{repo_relative(other)}`" if other else None
        if other is None:
            say("making version B: an untrained generator of A's architecture, exported with `python -m export` ...")
            other = make_version(args.artifact, work, logs / "version-b.log")
            c = read_manifest(args.artifact)["source"]["generator"]
            b_source = (
                f"made by this run: an untrained generator of A's architecture and size ({c['arch']}, ngf {c['ngf']}, nz {c['nz']}, "
                f"{c['image_size']}x{c['image_size']}x{c['channels']}), DCGAN init seeded {VERSION_SEED}, conv weights "
                f"x{WEIGHT_SCALE:g}, exported with `python -m export`"
            )
        tags = register_versions([args.artifact, other], work / "bentoml", logs / "register.log")
        manifest = read_manifest(args.artifact)
        report["tolerance_levels"] = tolerance = int(manifest.get("golden", {}).get("tolerance_levels", 1))
        report["versions_served"] = [
            {"tag": tags[0], "source": f"`{repo_relative(args.artifact)}`"},
            {"tag": tags[1], "source": b_source},
        ]
        seeds = list(range(args.seeds))
        refs = {tag: references(path, seeds, args.n) for tag, path in zip(tags, (args.artifact, other), strict=True)}
        same = [s for s in seeds if np.abs(refs[tags[0]][s].astype(np.int16) - refs[tags[1]][s]).max() <= tolerance]
        if same:
            raise UserError(
                f"versions A and B draw the same images for {len(same)} of the seeds (e.g. {same[0]}): give --other another model"
            )
        key = secrets.token_urlsafe(24)
        env = {"DCGAN_MODEL": tags[0], "DCGAN_MODELS": "", "DCGAN_API_KEY": key}
        say(f"starting the server: {tags[0]} (A), {tags[1]} (B) in its store")
        with serve_bentoml(args.artifact, work / "bentoml", logs / "server.log", env) as server:
            info = httpx.get(f"{server.url}/info", headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT_S).json()
            settings = info.get("settings", {})
            report["server"] = (
                f"provider {info.get('provider')}, ORT threads {info.get('ort_threads')}, "
                f"DCGAN_WORKERS {settings.get('DCGAN_WORKERS')}, DCGAN_MAX_BATCH {settings.get('DCGAN_MAX_BATCH')}"
            )
            if http_get(f"{server.url}/readyz")[0] != 200:
                raise UserError(f"the server is not ready; see {logs / 'server.log'}")
            load = Load(server.url, key, args, refs, tolerance)
            say(f"load: {args.clients} clients, n={args.n}; {args.swaps} swaps, {args.interval:g} s apart")
            started = time.monotonic()
            swaps = run_loop(run_swaps(server.url, key, tags, load, args))
            ended = time.monotonic()
    answers = load.answers
    bounds = [s.sent for s in swaps[1:]] + [ended + TIMEOUT_S]
    report["swaps"] = [swap_figures(s, answers, until) for s, until in zip(swaps, bounds, strict=True)]
    report["summary"] = summary([r for r in report["swaps"] if r["status"] == 200])
    report["totals"] = figures(answers, swaps, started, ended, args.warmup)
    report["timeline"] = timeline(answers, swaps, started)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    say("")
    for line in [*tables(report), "", *verdicts(report)]:
        say(line)
    say(f"report: {out / 'report.md'}")
    t, refused = report["totals"], [r for r in report["swaps"] if r["status"] != 200]
    if refused or t["failed"] or t["mismatched"]:
        raise Failed(
            f"{len(refused)} swap(s) not answered 200, {t['failed']} request(s) failed, {t['mismatched']} answer(s) not their version's "
            f"images; see {out / 'report.md'} and {logs / 'server.log'}"
        )


if __name__ == "__main__":
    main()
