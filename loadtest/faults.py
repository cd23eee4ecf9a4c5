"""`python -m loadtest.faults`: the service under production faults, one fresh server per scenario, one table.

Scenarios (each against `bentoml serve service:svc` on a free loopback port, serving --artifact):
  drain       SIGTERM while 16 clients ask for 16 images each: admitted requests must all complete
  overload    64 clients asking for 64 images each, several times what the CPU generates in a deadline
  slow        200 connections trickling a body and 200 never finishing their headers, beside 8 normal clients
  crash       kill -9 of the generator worker while 8 clients ask for 4 images each (DCGAN_GENERATOR=service, the
              mode with a generator worker of its own; the other scenarios run the default settings)
  disconnect  40 clients that give up after 50 ms on 64 images each, then one normal request

Columns: requests sent; completed (200); refused: the designed answers (429/503 with Retry-After, 408 for a
stalled body, a refused or reset connection once a draining server has closed); failed: anything else (5xx, a 503
without Retry-After, a timeout, a reset); lost: requests admitted and never completed (sent before the
SIGTERM, or in flight at the crash, without a 200); p50/p99 of the completed; recovery: the seconds from
the fault to the state named in the notes. Goal: lost = 0 everywhere, failed = 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import platform
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import atomic_write_json, repo_relative
from common.server import REPO, serve_bentoml

SCENARIOS = ("drain", "overload", "slow", "crash", "disconnect")
# The 503s the service answers by design (each with Retry-After); a 503 for any other reason is a failure.
DESIGNED_503 = ("server shutting down", "server overloaded", "generator overloaded")
TIMEOUT_S = 30.0  # a client's patience: what "a client that waits 30 s" means in the goals


@dataclass
class Outcome:
    scenario: str
    sent: int = 0
    completed: int = 0
    refused: collections.Counter = field(default_factory=collections.Counter)
    failed: collections.Counter = field(default_factory=collections.Counter)
    lost: int = 0
    latencies: list[float] = field(default_factory=list)
    recovery_s: float | None = None
    notes: str = ""

    def record(self, kind: str, seconds: float, retry_after: str | None = None, error: str = "") -> str:
        """Count one answer: kind is a status code or an exception name, error the body's "error"; returns 'completed',
        'refused' (one of the designed answers, named by its status and reason) or 'failed'."""
        self.sent += 1
        if kind == "200":
            self.completed += 1
            self.latencies.append(seconds)
            return "completed"
        reason = next((r for r in DESIGNED_503 if error.startswith(r)), None)
        designed = (kind == "429" and retry_after is not None) or kind in ("408", "ConnectError")
        designed = designed or (kind == "503" and retry_after is not None and reason is not None)
        key = f"{kind} {reason}" if kind == "503" and reason else kind
        (self.refused if designed else self.failed)[key] += 1
        return "refused" if designed else "failed"

    def row(self) -> dict:
        ms = sorted(self.latencies)
        pct = (lambda q: f"{1000 * ms[min(len(ms) - 1, int(q * len(ms)))]:.0f}") if ms else (lambda q: "-")
        counts = lambda c: ", ".join(f"{n} ({k})" for k, n in sorted(c.items())) or "0"  # noqa: E731
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.2f}"
        return {
            "scenario": self.scenario,
            "sent": self.sent,
            "completed": self.completed,
            "refused": counts(self.refused),
            "failed": counts(self.failed),
            "lost": self.lost,
            "p50/p99 ms": f"{pct(0.5)} / {pct(0.99)}",
            "recovery s": recovery,
            "notes": self.notes,
        }


async def _post(client: httpx.AsyncClient, url: str, body: dict) -> tuple[str, float, str | None, str]:
    """(status or exception name, seconds, Retry-After, the error message of a refusal)."""
    start = time.monotonic()
    try:
        r = await client.post(f"{url}/sample", json=body)
        error = ""
        if r.status_code != 200 and "json" in r.headers.get("content-type", ""):
            with contextlib.suppress(ValueError):
                error = r.json().get("error", "")
        return str(r.status_code), time.monotonic() - start, r.headers.get("retry-after"), error
    except httpx.HTTPError as e:
        return type(e).__name__, time.monotonic() - start, None, ""


def _client(connections: int, timeout: float = TIMEOUT_S) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=connections))


async def _closed_loop(url: str, clients: int, n: int, stop: asyncio.Event, on_answer) -> None:
    """`clients` clients, each sending its next request when the last is answered, until `stop` is set."""
    async with _client(clients) as client:

        async def loop(seed: int) -> None:
            while not stop.is_set():
                sent_at = time.monotonic()
                kind, seconds, retry_after, error = await _post(client, url, {"seed": seed, "n": n})
                on_answer(sent_at, kind, seconds, retry_after, error)
                if retry_after is not None:
                    await asyncio.sleep(float(retry_after))
                elif not kind.isdigit():  # no server to answer (drained away): do not spin
                    await asyncio.sleep(0.05)
                seed += clients

        await asyncio.gather(*(loop(seed) for seed in range(clients)))


async def drain(server) -> Outcome:
    out = Outcome("drain (SIGTERM under load)", notes="recovery: signal to process exit (the pod is gone)")
    stop, signalled = asyncio.Event(), []

    def on_answer(sent_at, kind, seconds, retry_after, error):
        if signalled and sent_at >= signalled[0] and kind in ("ReadError", "RemoteProtocolError"):
            kind = "ConnectError"  # a connection the closing server reset unanswered: refused, as a closed port is
        verdict = out.record(kind, seconds, retry_after, error)
        if verdict == "failed" and (not signalled or sent_at < signalled[0]):
            out.lost += 1  # sent before the signal and neither served nor refused by design

    load = asyncio.create_task(_closed_loop(server.url, 16, 16, stop, on_answer))
    await asyncio.sleep(2.0)
    signalled.append(time.monotonic())
    server.process.send_signal(signal.SIGTERM)
    while server.process.poll() is None and time.monotonic() - signalled[0] < 60:
        await asyncio.sleep(0.05)
    out.recovery_s = time.monotonic() - signalled[0]
    stop.set()
    await load
    return out


async def overload(server) -> Outcome:
    out = Outcome("overload (64 clients x n=64)", notes="recovery: burst end to a lone n=1 answered")
    stop = asyncio.Event()
    refusal_ms = []

    def on_answer(sent_at, kind, seconds, retry_after, error):
        if out.record(kind, seconds, retry_after, error) == "refused":
            refusal_ms.append(1000 * seconds)

    load = asyncio.create_task(_closed_loop(server.url, 64, 64, stop, on_answer))
    await asyncio.sleep(10.0)
    stop.set()
    await load
    out.recovery_s = await _time_to_a_lone_answer(server.url)
    if refusal_ms:
        out.notes += f"; refusals p50 {sorted(refusal_ms)[len(refusal_ms) // 2]:.0f} ms"
    return out


async def _time_to_a_lone_answer(url: str) -> float:
    start = time.monotonic()
    async with _client(1) as client:
        while (await _post(client, url, {"seed": 1, "n": 1}))[0] != "200" and time.monotonic() - start < 60:
            await asyncio.sleep(0.05)
    return time.monotonic() - start


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


async def slow(server) -> Outcome:
    out = Outcome("slow clients (200 bodies, 200 headers)", notes="8 normal clients' answers; stalled bodies got")
    without = Outcome("the same 8 clients alone")
    stop = asyncio.Event()
    load = asyncio.create_task(_closed_loop(server.url, 8, 1, stop, lambda s, k, sec, r, e: without.record(k, sec, r, e)))
    await asyncio.sleep(5.0)
    stop.set()
    await load
    socks = []
    try:
        for i in range(400):
            sock = _connect(server.url)
            head = b'POST /sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{"'
            sock.sendall(head if i % 2 == 0 else b"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Ty")
            socks.append(sock)
        stop = asyncio.Event()
        load = asyncio.create_task(_closed_loop(server.url, 8, 1, stop, lambda s, k, sec, r, e: out.record(k, sec, r, e)))
        await asyncio.sleep(5.0)
        stop.set()
        await load
        answers = collections.Counter()
        for sock in socks[::2]:
            sock.settimeout(15)
            with contextlib.suppress(OSError):
                answers[sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")] += 1
        out.notes += " " + ", ".join(f"{n} x {a!r}" for a, n in answers.items())
        out.notes += f"; the same clients without them: p50/p99 {without.row()['p50/p99 ms']} ms"
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
    return out


async def crash(server) -> Outcome:
    out = Outcome("generator crash (kill -9)", notes="recovery: kill to /readyz 200 again")
    stop, killed = asyncio.Event(), []

    def on_answer(sent_at, kind, seconds, retry_after, error):
        verdict = out.record(kind, seconds, retry_after, error)
        if verdict == "failed" and killed and sent_at <= killed[0] < sent_at + seconds:
            out.lost += 1  # in flight at the crash, and not completed

    load = asyncio.create_task(_closed_loop(server.url, 8, 4, stop, on_answer))
    await asyncio.sleep(2.0)
    (worker,) = [p for p in psutil.Process(server.process.pid).children(recursive=True) if "generator" in " ".join(p.cmdline())]
    killed.append(time.monotonic())
    worker.kill()
    seen_down = False
    async with _client(2, timeout=5) as client:
        while time.monotonic() - killed[0] < 60:
            with contextlib.suppress(httpx.HTTPError):
                ready = (await client.get(f"{server.url}/readyz")).status_code == 200
                seen_down = seen_down or not ready
                if seen_down and ready:
                    break
            await asyncio.sleep(0.1)
    out.recovery_s = time.monotonic() - killed[0]
    await asyncio.sleep(2.0)
    stop.set()
    await load
    return out


async def disconnect(server) -> Outcome:
    out = Outcome("client disconnects (40 x n=64, 50 ms)", notes="recovery: to the next request's answer")
    before = httpx.get(f"{server.url}/info", timeout=TIMEOUT_S).json()["merging"]
    async with _client(64, timeout=0.05) as client:
        answers = await asyncio.gather(*(_post(client, server.url, {"seed": seed, "n": 64}) for seed in range(40)))
    kinds = collections.Counter(kind for kind, _, _, _ in answers)
    for kind, seconds, retry_after, error in answers:
        if kind.isdigit():  # an answer; a client that gave up first is its own choice, neither refused nor failed
            out.record(kind, seconds, retry_after, error)
    out.sent = len(answers)
    out.recovery_s = await _time_to_a_lone_answer(server.url)
    await asyncio.sleep(1.0)
    after = httpx.get(f"{server.url}/info", timeout=TIMEOUT_S).json()["merging"]
    early = after["cancelled_disconnected"] - before["cancelled_disconnected"]
    queued = after["dropped_disconnected"] - before["dropped_disconnected"]
    generated = after["requests"] - before["requests"] - 1  # less the lone request
    out.notes = (
        f"clients saw {dict(kinds)}; the server dropped {queued} requests whose clients left while they waited for "
        f"the generator and {early} before their body was in, and generated {generated}; " + out.notes
    )
    return out


RUNNERS = {"drain": drain, "overload": overload, "slow": slow, "crash": crash, "disconnect": disconnect}


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


@cli_main
def main(argv=None) -> None:
    parser = OneLineErrorParser(
        prog="python -m loadtest.faults",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--artifact", type=Path, default=REPO / "artifacts" / "default", help="model artifact to serve (default: %(default)s)"
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "out" / "faults", help="server logs and faults.json go here (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or not scenarios:
        raise UserError(f"--scenarios {args.scenarios!r}: choose from {', '.join(SCENARIOS)}")
    if not (args.artifact / "manifest.json").is_file():
        raise UserError(f"no model artifact at {args.artifact} (no manifest.json); export one with `python -m export RUN_DIR --out DIR`")
    rows = []
    for name in scenarios:
        print(f"[faults] {name}: starting a fresh server", flush=True)
        home = args.out / "homes" / name
        env = {"DCGAN_GENERATOR": "service"} if name == "crash" else {}
        with serve_bentoml(args.artifact, home, args.out / "logs" / f"{name}.log", env) as server:
            outcome = asyncio.run(RUNNERS[name](server))
        rows.append(outcome.row())
        print(f"[faults] {name}: {json.dumps(outcome.row())}", flush=True)
    print()
    print(table(rows))
    report = {
        "command": shlex.join(["python", "-m", "loadtest.faults", *(sys.argv[1:] if argv is None else argv)]),
        "artifact": repo_relative(args.artifact),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }
    atomic_write_json(args.out / "faults.json", report)
    print(f"\n{args.out / 'faults.json'}")


if __name__ == "__main__":
    main()
