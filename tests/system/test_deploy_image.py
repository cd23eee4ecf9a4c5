"""`python -m deploy.image`'s parts that need no container engine: the CPU variant, the mirror, the build mounts,
the command line's errors. Building and running the images: test_image.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import assert_one_line_error

from common.cli import UserError
from common.paths import REPO_ROOT as ROOT
from deploy.image.base import debian_mirror, local_name, official_name
from deploy.image.build_settings import PipSettings, build_mounts
from deploy.image.dockerfile import for_serving
from deploy.image.variants import cpu_bentofile, load_bentofile, variant


def test_the_cpu_bento_swaps_only_the_onnx_runtime_build_and_the_name():
    gpu = load_bentofile()
    cpu = variant("cpu").bentofile
    (gpu_runtime,) = [p for p in gpu["python"]["packages"] if p.startswith("onnxruntime")]
    version = gpu_runtime.split("==")[1]
    assert gpu_runtime.startswith("onnxruntime-gpu[")  # the GPU image brings CUDA and cuDNN as wheels
    expected = [f"onnxruntime=={version}" if p == gpu_runtime else p for p in gpu["python"]["packages"]]
    assert cpu["python"]["packages"] == expected
    assert cpu["name"] == gpu["name"] + "-cpu" and variant("gpu").bentofile == gpu
    # Everything that shapes the Dockerfile's lower layers stays the same, so the images share them.
    assert {k: v for k, v in cpu.items() if k not in ("name", "description", "python")} == {
        k: v for k, v in gpu.items() if k not in ("name", "description", "python")
    }


def test_an_unpinned_gpu_runtime_is_refused():
    gpu = load_bentofile()
    gpu["python"]["packages"] = [p.split("==")[0] if p.startswith("onnxruntime") else p for p in gpu["python"]["packages"]]
    with pytest.raises(UserError, match="pinned onnxruntime-gpu"):
        cpu_bentofile(gpu)
    with pytest.raises(UserError, match="unknown image variant"):
        variant("tpu")


def test_a_changed_bentoml_template_stops_the_build_saying_where():
    """deploy/image/dockerfile.py rewrites three lines of BentoML's Dockerfile; each must be there exactly once
    (test_bento.py checks the rewrite on a real generated Dockerfile)."""
    with pytest.raises(UserError, match=r"has 0 `FROM \.\.\. AS base-container` lines .* deploy/image/dockerfile.py"):
        for_serving("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y git\n")
    two_installs = "FROM b AS base-container\nRUN apt-get update && apt-get install a\nRUN apt-get update && apt-get install b\n"
    with pytest.raises(UserError, match="has 2 `RUN apt-get update && apt-get install` lines"):
        for_serving(two_installs)


def test_the_local_base_is_named_as_no_registry_s_image():
    assert local_name("3.11").startswith("localhost/") and "python:3.11-slim" not in local_name("3.11")
    assert official_name("3.11") == "docker.io/library/python:3.11-slim"


def test_the_debian_mirror_comes_from_the_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    assert debian_mirror(tmp_path) == "http://deb.debian.org/debian"  # nothing configured
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://old.example/debian"


def test_the_hosts_pip_settings_reach_the_build_as_read_only_mounts(tmp_path):
    assert build_mounts(PipSettings(None, None), tmp_path) == []
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    mounts = build_mounts(PipSettings(str(ca), "https://pypi.internal/simple"), tmp_path)
    assert f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro" in mounts  # the bundle apt, pip and uv (native TLS) read
    assert all(m.endswith(":ro") for m in mounts) and len(mounts) == 3
    pip_conf = (tmp_path / "pip.conf").read_text()
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in pip_conf and "index-url = https://pypi.internal/simple" in pip_conf
    uv_toml = (tmp_path / "uv.toml").read_text()
    assert "native-tls = true" in uv_toml and 'index-url = "https://pypi.internal/simple"' in uv_toml


def run_cli(*argv: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PATH": path} if path is not None else {})}
    argv = [sys.executable, "-m", "deploy.image", *argv]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_help_says_how_to_build_both_images():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "--local-base" in out.stdout and "--registry" in out.stdout and "--variant" in out.stdout


@pytest.mark.parametrize("argv", [["--variant", "tpu"], ["--builder", "kaniko"]])
def test_bad_flags_get_one_line_and_exit_2(argv):
    out = run_cli(*argv)
    assert_one_line_error(out)


@pytest.mark.parametrize("builder", ["auto", "docker", "podman"])
def test_a_missing_builder_is_one_line_saying_what_to_install(builder, tmp_path):
    out = run_cli("--builder", builder, path=str(tmp_path))  # a PATH with no builder on it
    assert_one_line_error(out)
    if builder == "auto":
        assert out.stderr.startswith("error: no container builder found: install Docker, podman or buildah")
    else:
        assert out.stderr.startswith(f"error: {builder} not found: install it, or leave out --builder")
