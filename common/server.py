"""Start, watch and stop servers on free loopback ports: used by the load tests and the test suite alike.

    with running(argv, env, log_path, port) as server: ...          # any server with a readiness URL (/readyz)
    with serve_bentoml(artifact, home, log_path, env={"DCGAN_MAX_BATCH": "2"}) as server: ...
    with serve_baseline(model_path, log_path) as server: ...

Each server is waited for on /readyz (failing fast, with its log's tail, if it exits) and stopped in a
`finally`, also on Ctrl-C. `bentoml serve` gets an empty BENTOML_HOME of its own: it registers the
artifact it is given (DCGAN_DEFAULT_ARTIFACT) and serves exactly that, whatever the user's store holds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from common.cli import UserError
from common.paths import REPO_ROOT

REPO = REPO_ROOT  # the name loadtest/ (run, faults, determinism, peer_env) imports from here; common.paths is its home

READY_TIMEOUT_S = 180  # two BentoML workers import bentoml + onnxruntime on a busy 2-core box
STOP_TIMEOUT_S = 30


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen | None  # None: a server we did not start (--host)
    log_path: Path | None

    def processes(self) -> list[psutil.Process]:
        """The server's process and all its descendants (BentoML: arbiter + entry + generator workers)."""
        if self.process is None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def check_loopback(url: str) -> str:
    """The URL without a trailing slash, if its host resolves only to loopback addresses; else UserError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--host {url!r} is not an http(s) URL such as http://127.0.0.1:3000")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80)}
    except socket.gaierror as e:
        raise UserError(f"--host {url!r}: cannot resolve {parts.hostname!r} ({e})") from None
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise UserError(
            f"--host {url!r} resolves to non-loopback {outside}; load tests target this machine only "
            "(pass --allow-non-loopback if you own that server)"
        )
    return url.rstrip("/")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_ready(
    url: str, process: subprocess.Popen | None, log_path: Path | None, timeout_s: float = READY_TIMEOUT_S, ready_path: str = "/readyz"
) -> None:
    """Poll GET `ready_path` until 200; UserError with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while http_get(f"{url}{ready_path}")[0] != 200:
        if process is not None and process.poll() is not None:
            raise UserError(f"the server exited with {process.returncode} before it was ready; {_log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise UserError(f"{url}{ready_path} not ready after {timeout_s:.0f} s; {_log_tail(log_path)}")
        time.sleep(0.5)


def _log_tail(log_path: Path | None, lines: int = 15) -> str:
    if log_path is None:
        return "no log"
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"last lines of {log_path}:\n" + "\n".join(tail)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server (BentoML's arbiter stops its own workers), then SIGKILL whatever outlived a grace period.

    BentoML's workers run in sessions of their own, so they are found as descendants, not by process group.
    """
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT_S)
    if process.poll() is None:
        process.kill()
    process.wait()
    _, alive = psutil.wait_procs(descendants, timeout=STOP_TIMEOUT_S)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()


@contextlib.contextmanager
def running(
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    port: int,
    *,
    cwd: Path = REPO_ROOT,
    ready_timeout_s: float = READY_TIMEOUT_S,
    ready_path: str = "/readyz",
) -> Iterator[Server]:
    """Start `argv` (a server that will listen on `port`), wait for GET `ready_path`, yield it, stop it on the way out.

    The one server lifecycle of this repository: the load tests and the test suite both start servers with it.
    The process gets a session of its own, so a Ctrl-C in the terminal reaches the load test, which then stops it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_ready(server.url, process, log_path, ready_timeout_s, ready_path)
        yield server
    finally:
        stop(process)


def bentoml_serve_argv(port: int, target: str = "service:svc", python: str = sys.executable) -> list[str]:
    return [python, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]


def serve_bentoml(artifact: Path, bentoml_home: Path, log_path: Path, env: dict[str, str] | None = None):
    """`bentoml serve service:svc` on a free port, serving `artifact` from the empty store `bentoml_home`."""
    port = free_port()
    # DCGAN_MODEL would name a tag that the fresh store does not hold; every other DCGAN_* setting passes through.
    full_env = {k: v for k, v in os.environ.items() if k not in ("DCGAN_MODEL", "DCGAN_DEFAULT_ARTIFACT")}
    full_env.update(BENTOML_HOME=str(bentoml_home), BENTOML_DO_NOT_TRACK="True", DCGAN_DEFAULT_ARTIFACT=str(artifact))
    full_env.update(env or {})
    return running(bentoml_serve_argv(port), full_env, log_path, port)


def serve_baseline(model_path: Path, log_path: Path, threads: int | None = None):
    """`python -m loadtest.baseline MODEL` (FastAPI + torch eager) on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "loadtest.baseline", str(model_path), "--port", str(port)]
    argv += ["--threads", str(threads)] if threads else []
    return running(argv, dict(os.environ), log_path, port)


@contextlib.contextmanager
def existing(url: str) -> Iterator[Server]:
    """A server someone else started (--host): waited for, never stopped."""
    wait_ready(url, None, None)
    yield Server(url, None, None)
