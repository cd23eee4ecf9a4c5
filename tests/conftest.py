"""Shared fixtures: a real `bentoml serve service:svc` on a free loopback port, started once per session.

    service_url       base URL of the session's server, e.g. "http://127.0.0.1:41234" (use this one)
    service_server    the same server as a ServiceServer (url, process, log path, artifact dir)
    start_service     context manager for an extra server with other settings (env overrides)
    service_artifact  the model artifact the servers are given
    other_artifact    a second model artifact (another seed), for the servers of several models
    two_models        a server of two models (DCGAN_MODELS=dcgan-generator,dcgan-other), as a ServiceServer
    serve_to_exit     run a server that is expected to refuse to start; returns (exit code, output)

The helpers behind them (serve, service_env, tiny_artifact) are in helpers.py. Each server gets its own
empty BENTOML_HOME, so it takes the fresh-clone path: the service registers the artifact in
DCGAN_DEFAULT_ARTIFACT into the store itself, then serves it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServiceServer, serve, service_env, tiny_artifact  # tests/helpers.py

from common.paths import REPO_ROOT
from common.server import READY_TIMEOUT_S, bentoml_serve_argv, free_port, stop

# Files that take minutes: collected first, so that the two pytest-xdist workers (pyproject.toml's addopts,
# one file per worker at a time) run them beside the rest instead of one worker finishing alone at the end.
LONGEST_FIRST = ("test_image.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: every other test keeps its order


@pytest.fixture(scope="session")
def service_artifact(tmp_path_factory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("service-artifact"))


@pytest.fixture(scope="session")
def service_server(service_artifact, tmp_path_factory) -> Iterator[ServiceServer]:
    with serve(tmp_path_factory.mktemp("service"), service_artifact) as server:
        yield server


@pytest.fixture(scope="session")
def other_artifact(tmp_path_factory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("other-artifact"), seed=1)


TWO_MODELS_ENV = {"DCGAN_MODELS": "dcgan-generator,dcgan-other"}


@pytest.fixture(scope="session")
def two_models(service_artifact, other_artifact, tmp_path_factory) -> Iterator[ServiceServer]:
    """A server of two models: the default (service_artifact) and dcgan-other (other_artifact); no API key."""
    with serve(tmp_path_factory.mktemp("two-models"), service_artifact, TWO_MODELS_ENV, {"dcgan-other": other_artifact}) as server:
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
            cwd=REPO_ROOT,
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
