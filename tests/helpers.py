"""Helpers the test files share (fixtures live in conftest.py): the service under test, the one-line error
contract of the CLIs, and the Kubernetes manifests rendered.

    serve(workdir, artifact_dir, env, models)  a real `bentoml serve service:svc` on a free loopback port (context
                                        manager); `models` (name -> artifact) are registered in its store first
    service_env(home, artifact, env)    the environment such a server runs with
    register(home, artifact, name)      `python -m contract.store` into a server's store: the tag
    tiny_artifact(workdir, seed)        a real artifact from the real exporter, small enough for CPU tests
    assert_one_line_error(result, ...)  bad input: one `error:` line on stderr, exit 2, no traceback (common/cli.py)
    kustomize(dir), overlay_deployment  deploy/k8s rendered with `kubectl kustomize`
    metric(url, name, **labels)         a running service's /metrics: the sum of one metric's matching samples
    refused(url, reason, route)         dcgan_refused_total of a route and refusal reason
    locust_entry(name, times, last)     one request name's row of locust's PREFIX.json, for the load test's parsers
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from common.cli import EXIT_USAGE, UserError
from common.paths import REPO_ROOT
from common.server import bentoml_serve_argv, free_port, running


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
def serve(
    workdir: Path, artifact_dir: Path, env: dict[str, str] | None = None, models: dict[str, Path] | None = None
) -> Iterator[ServiceServer]:
    """Start `bentoml serve service:svc`, wait for /readyz, yield, then stop it; fail fast with its log if it dies."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, log_path = free_port(), workdir / "serve.log"
    for name, artifact in (models or {}).items():
        register(workdir / "bentoml", artifact, name)
    try:
        with running(bentoml_serve_argv(port), service_env(workdir / "bentoml", artifact_dir, env), log_path, port) as server:
            yield ServiceServer(server.url, server.process, log_path, artifact_dir)
    except UserError as e:  # raised before the yield only: the server never became ready
        pytest.fail(f"bentoml serve: {e}\nits whole log:\n{log_path.read_text(errors='replace')}")


def register(bentoml_home: Path, artifact_dir: Path, name: str) -> str:
    """Register an artifact in a server's model store (`python -m contract.store`); its tag."""
    done = subprocess.run(
        [sys.executable, "-m", "contract.store", str(artifact_dir), "--name", name],
        cwd=REPO_ROOT,
        env=service_env(bentoml_home, artifact_dir),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def tiny_artifact(workdir: Path, seed: int = 0) -> Path:
    """A real artifact from the real exporter: an untrained ngf=8 generator (fast on CPU), its images varying with the
    latents; another `seed` gives another model (other weights, so other images and another tag)."""
    run_dir, artifact_dir = workdir / "run", workdir / "artifact"
    # ngf 8 with its conv weights 4x the N(0, 0.02) init: fast on CPU, and the images vary with the latents (std ~7 levels).
    make = ["-m", "training.untrained", str(run_dir), "--config", '{"ngf": 8}', "--seed", str(seed), "--scale", "4"]
    for argv in (make, ["-m", "export", str(run_dir), "--out", str(artifact_dir), "--no-register"]):
        done = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"making the test artifact failed: {argv[:2]}\n{done.stdout}\n{done.stderr}")
    return artifact_dir


def assert_one_line_error(result: subprocess.CompletedProcess | tuple[int, str], *needles: str, exit_code: int = EXIT_USAGE) -> None:
    """A CLI refused bad input as common/cli.py says: exit 2, one line on stderr starting `error:` and holding every needle.

    result: the CompletedProcess of the CLI, or (exit code, stderr) of a main() called in the test."""
    code, stderr = (result.returncode, result.stderr) if isinstance(result, subprocess.CompletedProcess) else result
    lines = stderr.strip().splitlines()
    assert code == exit_code, f"exit {code}, expected {exit_code}: {stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


K8S = REPO_ROOT / "deploy" / "k8s"


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: these tests render with `kubectl kustomize` (kubectl >= 1.27 embeds kustomize v5)")
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def overlay_deployment(overlay: str) -> dict:
    """The Deployment of deploy/k8s/overlays/<overlay>, rendered."""
    (deployment,) = [o for o in kustomize(K8S / "overlays" / overlay) if o["kind"] == "Deployment"]
    return deployment


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if there is none)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def refused(url: str, reason: str, route: str = "/sample") -> float:
    return metric(url, "dcgan_refused_total", route=route, reason=reason)


def locust_entry(name: str, times: dict[int, int], last: float = 1009.0) -> dict:
    """One row of locust's PREFIX.json: a request name's count and latency histogram (ms -> count)."""
    count = sum(times.values())
    return {
        "name": name,
        "method": "POST",
        "last_request_timestamp": last,
        "start_time": 1000.0,
        "num_requests": count,
        "num_none_requests": 0,
        "num_failures": count if name.startswith("failed") else 0,
        "total_response_time": sum(ms * c for ms, c in times.items()),
        "max_response_time": max(times),
        "min_response_time": min(times),
        "total_content_length": 0,
        "response_times": {str(ms): c for ms, c in times.items()},
        "num_reqs_per_sec": {},
        "num_fail_per_sec": {},
    }
