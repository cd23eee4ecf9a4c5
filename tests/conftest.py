"""Shared fixtures: a real `bentoml serve service:svc` on a free loopback port, started once per session.

    service_url       base URL of the session's server, e.g. "http://127.0.0.1:41234" (use this one)
    service_server    the same server as a ServiceServer (url, process, log path, artifact dir)
    start_service     context manager for an extra server with other settings (env overrides)
    service_artifact  the model artifact the servers are given
    serve_to_exit     run a server that is expected to refuse to start; returns (exit code, output)

Each server gets its own empty BENTOML_HOME, so it takes the fresh-clone path: the service registers
the artifact in DCGAN_DEFAULT_ARTIFACT into the store itself, then serves it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.cli import UserError
from common.paths import REPO_ROOT as REPO
from common.server import READY_TIMEOUT_S, bentoml_serve_argv, free_port, running, stop

# Files that take minutes: collected first, so that the two pytest-xdist workers (pyproject.toml's addopts,
# one file per worker at a time) run them beside the rest instead of one worker finishing alone at the end.
LONGEST_FIRST = ("test_image.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: every other test keeps its order


@dataclass(frozen=True)
class ServiceServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    artifact_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def service_env(bentoml_home: Path, artifact_dir: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a service subprocess: isolated store, no usage tracking, our artifact as the default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCGAN_")}
    env.update(
        BENTOML_HOME=str(bentoml_home),
        BENTOML_DO_NOT_TRACK="True",
        DCGAN_DEFAULT_ARTIFACT=str(artifact_dir),
    )
    env.update(overrides or {})
    return env


@contextlib.contextmanager
def serve(workdir: Path, artifact_dir: Path, env: dict[str, str] | None = None) -> Iterator[ServiceServer]:
    """Start `bentoml serve service:svc`, wait for /readyz, yield, then stop it; fail fast with its log if it dies."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, log_path = free_port(), workdir / "serve.log"
    try:
        with running(bentoml_serve_argv(port), service_env(workdir / "bentoml", artifact_dir, env), log_path, port) as server:
            yield ServiceServer(server.url, server.process, log_path, artifact_dir)
    except UserError as e:  # raised before the yield only: the server never became ready
        pytest.fail(f"bentoml serve: {e}\nits whole log:\n{log_path.read_text(errors='replace')}")


def _tiny_artifact(workdir: Path) -> Path:
    """A real artifact from the real exporter: an untrained ngf=8 generator (fast on CPU), its images varying with the latents."""
    run_dir, artifact_dir = workdir / "run", workdir / "artifact"
    code = (
        "import json, sys, torch\n"
        "from pathlib import Path\n"
        "from training.models import GeneratorConfig, build_generator, init_weights\n"
        "from training.rundir import save_generator\n"
        "run = Path(sys.argv[1]); cfg = GeneratorConfig(ngf=8)\n"
        "g = build_generator(cfg); init_weights(g, torch.Generator().manual_seed(0))\n"
        "with torch.no_grad():\n"  # conv weights 4x their N(0, 0.02) init: images then vary with the latents (std ~7 levels)
        "    [p.mul_(4) for p in g.parameters() if p.dim() > 1]\n"
        "save_generator(run, cfg, g)\n"
        "(run / 'config.json').write_text(json.dumps({'note': 'untrained generator for service tests'}))\n"
    )
    for argv in (["-c", code, str(run_dir)], ["-m", "export", str(run_dir), "--out", str(artifact_dir), "--no-register"]):
        done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"making the test artifact failed: {argv[:2]}\n{done.stdout}\n{done.stderr}")
    return artifact_dir


@pytest.fixture(scope="session")
def service_artifact(tmp_path_factory) -> Path:
    return _tiny_artifact(tmp_path_factory.mktemp("service-artifact"))


@pytest.fixture(scope="session")
def service_server(service_artifact, tmp_path_factory) -> Iterator[ServiceServer]:
    with serve(tmp_path_factory.mktemp("service"), service_artifact) as server:
        yield server


@pytest.fixture(scope="session")
def service_url(service_server) -> str:
    return service_server.url


@pytest.fixture(scope="session")
def start_service(service_artifact, tmp_path_factory):
    """`with start_service({"DCGAN_MAX_INFLIGHT": "1"}) as server:` an extra server with other settings."""

    def start(env: dict[str, str] | None = None):
        return serve(tmp_path_factory.mktemp("service-extra"), service_artifact, env)

    return start


@pytest.fixture
def serve_to_exit(service_artifact, tmp_path):
    """`serve_to_exit(env, artifact_dir=..., bentoml_home=...)` -> (exit code, output) of a server that should not start."""

    def run(env: dict[str, str] | None = None, artifact_dir: Path | None = None, bentoml_home: Path | None = None):
        home = bentoml_home or tmp_path / "bentoml"
        process = subprocess.Popen(
            bentoml_serve_argv(free_port()),
            cwd=REPO,
            env=service_env(home, artifact_dir or service_artifact, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = process.communicate(timeout=READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop(process)
            pytest.fail(f"bentoml serve did not exit within {READY_TIMEOUT_S} s")
        return process.returncode, output

    return run
