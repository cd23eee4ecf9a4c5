"""The container images, built by `python -m deploy.image` and run the way the manifests run them.

Both images are built from a fresh BentoML store with podman, on the local debootstrap base (--local-base),
so nothing depends on a registry. The CPU image then runs as deploy/k8s runs it (non-root, read-only root
file system, only /tmp writable, no capabilities, the CPU overlay's environment) and must serve the same
bytes as `bentoml serve service:svc` from the checkout, the page at /ui/, and drain on SIGTERM. The CPU
overlay's Deployment also runs under `podman kube play`.

Needs podman, root and debootstrap (CI installs podman, buildah, runc and debootstrap and runs as root);
without them these tests skip, saying so.
Where crun cannot run containers (inside another container), deploy/image/containers-runc.conf selects runc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from helpers import overlay_deployment

from common.paths import REPO_ROOT as ROOT
from common.server import free_port, serve_bentoml

PODMAN = shutil.which("podman")
READY_TIMEOUT_S = 180
# (seed, n) compared byte for byte between the image and the checkout
CASES = [(0, 1), (42, 3), (2**31 - 1, 16)]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PODMAN is None, reason="no podman: apt-get install podman buildah runc debootstrap (as .ci/run does)"),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("debootstrap") is None,
        reason="the images are built on a debootstrapped base (no registry needed): that needs root and debootstrap",
    ),
]


def engine_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCGAN_")}
    if shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(ROOT / "deploy" / "image" / "containers-runc.conf")
    return env


def podman(*argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([PODMAN, *argv], env=engine_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"podman {' '.join(argv[:3])}: {out.stderr[-2000:]}"
    return out


def pod_env(container: dict) -> dict[str, str]:
    """The container's environment as Kubernetes sets it (limits.cpu through the downward API, rounded up)."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu" and ref.get("divisor", "1") == "1", e
            env[e["name"]] = str(cpu_cores(container["resources"]["limits"]["cpu"]))
    return env


def cpu_cores(quantity: str) -> int:
    """A CPU quantity as the downward API gives it with divisor 1: rounded up ("1500m" -> 2)."""
    return math.ceil(int(quantity[:-1]) / 1000) if quantity.endswith("m") else math.ceil(float(quantity))


def wait_ready(url: str, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        state = podman("inspect", name, "--format", "{{.State.Status}}", check=False).stdout.strip()
        if state not in ("created", "configured", "running"):
            logs = podman("logs", name, check=False)
            pytest.fail(f"container {name} is {state or 'gone'} before ready:\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(1)
    pytest.fail(f"container {name} not ready within {READY_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, dict]:
    """Both images, as `python -m deploy.image --local-base` builds them from a clean store; removed afterwards."""
    work = tmp_path_factory.mktemp("images")
    env = {**engine_env(), "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    argv = [sys.executable, "-m", "deploy.image", "--builder", "podman", "--local-base"]
    argv += ["--log-dir", str(work / "logs"), "--json", str(work / "built.json")]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((work / "logs").glob("*.log")))
        pytest.fail(f"python -m deploy.image failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}\n{logs}")
    print(out.stdout)  # the sizes table, for the CI log
    built = {b["variant"]: b for b in json.loads((work / "built.json").read_text())}
    yield built
    for b in built.values():
        podman("rmi", "--force", *b["tags"], check=False)


def run_in(image: str, *argv: str, entrypoint: str = "/app/.venv/bin/python") -> str:
    return podman("run", "--rm", "--entrypoint", entrypoint, image, *argv).stdout


def test_both_images_build_and_only_the_gpu_image_carries_cuda(images):
    listing = "import importlib.metadata as m; print('\\n'.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))"
    cpu = set(run_in(images["cpu"]["image"], "-c", listing).split())
    gpu = set(run_in(images["gpu"]["image"], "-c", listing).split())
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu  # the two would overwrite each other
    assert {"nvidia-cudnn-cu13", "nvidia-cuda-runtime"} <= gpu
    assert not any(d.startswith("nvidia-") and d != "nvidia-ml-py" for d in cpu), cpu  # nvidia-ml-py: BentoML's GPU probe
    assert not {"torch", "torchvision"} & (cpu | gpu)
    # No CUDA shared library anywhere in the CPU image, Python packages or not.
    cuda_libraries = ["libcudart.so*", "libcublas*.so*", "libcudnn*.so*", "libcufft.so*", "libonnxruntime_providers_cuda.so"]
    find = ["/app", "/usr", "(", *" -o ".join(f"-name {name}" for name in cuda_libraries).split(), ")"]
    found = run_in(images["cpu"]["image"], *find, entrypoint="/usr/bin/find")
    assert found.strip() == ""
    assert images["cpu"]["unpacked_bytes"] < images["gpu"]["unpacked_bytes"] / 2


def test_the_images_carry_no_compiler_git_or_apt_caches(images):
    """BentoML's Dockerfile installs build-essential, git and gnupg2; deploy/image/dockerfile.py drops them (every
    package is installed from a wheel: the build's uv runs with --only-binary :all:, so one without a wheel fails the
    build) and cleans apt's caches."""
    check = (
        "import glob, shutil; "
        "print([t for t in ('gcc', 'cc', 'make', 'git', 'gpg') if shutil.which(t)] + glob.glob('/var/cache/apt/*.bin') "
        "+ glob.glob('/var/cache/apt/archives/*.deb') + glob.glob('/var/lib/apt/lists/*_Packages*'))"
    )
    for variant in ("cpu", "gpu"):
        assert run_in(images[variant]["image"], "-c", check).strip() == "[]", variant


def test_the_local_base_has_a_name_of_its_own_and_no_official_one(images):
    """The debootstrapped stand-in is localhost/dcgan-local-base:..., never python:3.11-slim: a later build with
    registry access must pull the real image, not find the stand-in under its name."""
    from deploy.image.base import LABEL_KEY, local_name

    listed = json.loads(podman("images", "--format", "json").stdout)
    made = [i for i in listed if "built by deploy.image" in (i.get("Labels") or {}).get(LABEL_KEY, "")]
    names = [n for i in made for n in i.get("Names") or []]
    assert local_name("3.11") in names, names
    assert all(n.startswith("localhost/") for n in names), names  # no registry's name (docker.io/library/python, ...)
    cpu_base = podman("image", "inspect", images["cpu"]["image"], "--format", "{{json .RootFS.Layers}}").stdout
    base = podman("image", "inspect", local_name("3.11"), "--format", "{{json .RootFS.Layers}}").stdout
    assert json.loads(cpu_base)[: len(json.loads(base))] == json.loads(base)  # the images are built on it


def test_a_stand_in_that_an_earlier_version_named_python_slim_is_renamed(images):
    """Earlier versions tagged the stand-in docker.io/library/python:3.11-slim: the next --local-base build takes that
    name off it (keeping the image under its own name) instead of leaving it to shadow the official image."""
    from deploy.image import base, engine

    official, own = base.official_name("3.11"), base.local_name("3.11")
    if podman("image", "exists", official, check=False).returncode == 0:
        pytest.skip(f"{official} exists on this machine (the real image, or another build's): not touching it")
    podman("tag", own, official)
    try:
        assert base.ensure(engine.Engine("podman", PODMAN), "3.11") == own
        assert podman("image", "exists", official, check=False).returncode != 0
        assert podman("image", "exists", own, check=False).returncode == 0
    finally:
        podman("untag", own, official, check=False)


def test_the_images_share_their_layers_below_the_python_packages(images):
    """Same Dockerfile up to the package install: the base, system packages and uv are stored and pulled once."""
    cpu, gpu = (
        json.loads(podman("image", "inspect", images[v]["image"], "--format", "{{json .RootFS.Layers}}").stdout) for v in ("cpu", "gpu")
    )
    shared = 0
    while shared < min(len(cpu), len(gpu)) and cpu[shared] == gpu[shared]:
        shared += 1
    # What differs: the lock, the package install, the setup script's run, the bento's files, the entrypoint's mode.
    assert shared >= len(cpu) - 5 and len(cpu) == len(gpu), (shared, len(cpu), len(gpu))


def test_a_model_the_image_does_not_carry_stops_start_up_with_one_line(images):
    missing = "dcgan-generator:notinthisimage"
    out = podman("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--env", f"DCGAN_MODEL={missing}", images["cpu"]["image"], check=False)
    assert out.returncode != 0
    assert missing in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_image_user_port_and_environment_agree_with_the_manifests(images, variant):
    image = images[variant]["image"]
    pod = overlay_deployment(variant)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (port,) = container["ports"]
    config = podman("image", "inspect", image, "--format", "{{json .Config}}").stdout
    config = json.loads(config)
    assert f"{port['containerPort']}/tcp" in config["ExposedPorts"]
    assert run_in(image, "-u", entrypoint="/usr/bin/id").strip() == str(pod["securityContext"]["runAsUser"])
    assert run_in(image, "-g", entrypoint="/usr/bin/id").strip() == str(pod["securityContext"]["runAsGroup"])
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["ORT_DISABLE_TELEMETRY"] == "1"
    # The host's pip settings reached the build as mounts, never the image.
    assert not {k for k in env if k.startswith(("PIP_", "UV_INDEX", "SSL_CERT", "REQUESTS_CA"))}, env


@contextlib.contextmanager
def run_as_the_pod_does(image: str, overlay: str, **extra_env: str):
    """`podman run` of the image as the overlay's pod runs it: its user, read-only root, only /tmp writable, no
    capabilities, no privilege escalation, its environment. Yields (url, container name) once /readyz answers."""
    pod = overlay_deployment(overlay)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc, csc = pod["securityContext"], c["securityContext"]
    assert csc["readOnlyRootFilesystem"] and csc["capabilities"]["drop"] == ["ALL"] and not csc["allowPrivilegeEscalation"]
    port, name = free_port(), f"dcgan-test-{overlay}-{os.getpid()}"
    argv = ["run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    argv += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "-p", f"127.0.0.1:{port}:{c['ports'][0]['containerPort']}"]
    for k, v in {**pod_env(c), **extra_env}.items():
        argv += ["--env", f"{k}={v}"]
    podman(*argv, image)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, name)
        yield url, name
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture(scope="module")
def container(images):
    """The CPU image, run as the CPU overlay runs it."""
    with run_as_the_pod_does(images["cpu"]["image"], "cpu") as running:
        yield running


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """`bentoml serve service:svc` from the checkout, on the committed default artifact (what the bento packs)."""
    work = tmp_path_factory.mktemp("checkout")
    with serve_bentoml(ROOT / "artifacts" / "default", work / "bentoml", work / "serve.log") as server:
        yield server.url


def test_the_cpu_image_serves_the_same_bytes_as_the_checkout(container, checkout):
    url, _ = container
    # The same artifact (its manifest names every file's hash), registered under a version of its own by each store.
    assert httpx.get(f"{url}/info", timeout=10).json()["manifest"] == httpx.get(f"{checkout}/info", timeout=10).json()["manifest"]
    for seed, n in CASES:
        got = httpx.post(f"{url}/sample", json={"seed": seed, "n": n}, timeout=60)
        want = httpx.post(f"{checkout}/sample", json={"seed": seed, "n": n}, timeout=60)
        assert got.status_code == want.status_code == 200, got.text
        got, want = got.json(), want.json()
        assert got.pop("model").split(":")[0] == want.pop("model").split(":")[0]
        assert got == want, (seed, n)  # sizes and every PNG's bytes
    grid = "/sample/grid?seed=5&n=16"
    assert httpx.get(url + grid, timeout=60).content == httpx.get(checkout + grid, timeout=60).content


def test_the_probe_paths_answer_and_the_page_loads(container):
    url, _ = container
    (c,) = overlay_deployment("cpu")["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert httpx.get(url + c[probe]["httpGet"]["path"], timeout=10).status_code == 200, probe
    page = httpx.get(f"{url}/ui/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^":#]+)"', page.text)  # the page's own scripts and styles
    assert assets, page.text[:500]
    for asset in assets:
        r = httpx.get(httpx.URL(f"{url}/ui/").join(asset), timeout=10)
        assert r.status_code == 200, (asset, r.status_code)


def test_info_reflects_the_pods_environment(container):
    url, _ = container
    (c,) = overlay_deployment("cpu")["spec"]["template"]["spec"]["containers"]
    info = httpx.get(f"{url}/info", timeout=10).json()
    assert info["provider"] == "CPUExecutionProvider"
    assert info["ort_threads"] == int(pod_env(c)["DCGAN_ORT_THREADS"])
    assert info["golden"]["ok"], info["golden"]  # the export's golden images, regenerated inside the image


def test_the_container_log_is_clean(container):
    _, name = container
    logs = podman("logs", name)
    text = logs.stdout + logs.stderr
    assert "Traceback" not in text and "Read-only file system" not in text, text[-3000:]
    assert not re.search(r"\[[WE]:onnxruntime", text), text[-3000:]


def test_the_gpu_image_without_a_gpu_serves_on_cpu_unless_the_gpu_overlay_requires_cuda(images, container):
    """The GPU image also runs on CPU nodes (onnxruntime-gpu's CPU provider): same bytes as the CPU image. With the GPU
    overlay's DCGAN_REQUIRE_CUDA=1 it refuses to start instead, with one line. (On a GPU: docs/deploy.md.)"""
    cpu_url, _ = container
    request = {"seed": 11, "n": 8}
    overrides = {"DCGAN_REQUIRE_CUDA": "0"}  # the GPU overlay's own setting, lifted to see it serve here
    with run_as_the_pod_does(images["gpu"]["image"], "gpu", **overrides) as (url, _):
        assert httpx.get(f"{url}/info", timeout=10).json()["provider"] == "CPUExecutionProvider"
        got = httpx.post(f"{url}/sample", json=request, timeout=60).json()
    assert got["images"] == httpx.post(f"{cpu_url}/sample", json=request, timeout=60).json()["images"]
    refused = podman("run", "--rm", "--read-only", "--tmpfs", "/tmp", "--env", "DCGAN_REQUIRE_CUDA=1", images["gpu"]["image"], check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "CUDA" in output and "Traceback" not in output, output[-3000:]


def test_sigterm_drains_admitted_requests_and_exits_0(container):
    """Last of the container's tests: it stops the container."""
    url, name = container

    async def in_flight_then_term() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            requests = [asyncio.create_task(client.post(f"{url}/sample", json={"seed": i, "n": 64})) for i in range(6)]
            await asyncio.sleep(0.3)  # admitted: the first batches are running
            podman("kill", "--signal", "TERM", name)
            return [r.status_code for r in await asyncio.gather(*requests)]

    statuses = asyncio.run(in_flight_then_term())
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses  # admitted ones finish; late ones get 503, none is cut
    assert podman("wait", name, timeout=60).stdout.strip() == "0"
    logs = podman("logs", name)
    assert "SIGTERM: draining" in logs.stdout + logs.stderr


def test_podman_kube_play_runs_the_cpu_overlay(images, tmp_path):
    """The rendered CPU overlay's Deployment under `podman kube play`: what podman applies of it is checked here;
    what it ignores (readiness/startup probes, preStop, the grace period) is listed in docs/deploy.md."""
    d = overlay_deployment("cpu")
    d["spec"]["replicas"] = 1
    (c,) = d["spec"]["template"]["spec"]["containers"]
    c["image"] = f"localhost/{images['cpu']['image']}"
    port = free_port()
    c["ports"][0].update(hostPort=port, hostIP="127.0.0.1")  # kube play publishes host ports only
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(d))
    podman("kube", "play", str(manifest))
    name = f"{d['metadata']['name']}-pod-0-{c['name']}"
    try:
        wait_ready(f"http://127.0.0.1:{port}", name)
        (info,) = json.loads(podman("container", "inspect", name).stdout)
        sc = d["spec"]["template"]["spec"]["securityContext"]
        assert info["Config"]["User"] == f"{sc['runAsUser']}:{sc['runAsGroup']}"
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        env = dict(e.split("=", 1) for e in info["Config"]["Env"])
        cores = cpu_cores(c["resources"]["limits"]["cpu"])
        assert env["DCGAN_ORT_THREADS"] == str(cores)  # the downward API's limits.cpu
        assert httpx.get(f"http://127.0.0.1:{port}/info", timeout=10).json()["ort_threads"] == cores
        assert httpx.post(f"http://127.0.0.1:{port}/sample", json={"seed": 1}, timeout=60).status_code == 200
        grace_s = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        podman("pod", "stop", "--time", str(grace_s), f"{d['metadata']['name']}-pod-0")
        assert podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    finally:
        podman("kube", "down", str(manifest), check=False)
