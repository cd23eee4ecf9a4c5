"""The built bento, served the way its container serves it.

`bentoml build` runs from the repo into a fresh BENTOML_HOME, as on a fresh clone: the service
registers the committed default artifact itself and the bento packs it. Then `bentoml serve <tag>`
serves the *built* bento (not the source tree) on a free loopback port, from a fresh venv holding
only the bento's lock, with the image's and the cpu overlay's environment. Where this machine
allows (root and `unshare`), the pod's constraints are reproduced too: HOME and BENTOML_HOME
read-only, the repo's service/, contract/, export/, artifacts/ and .venv hidden so nothing but the bento and
its lock can be used, only TMPDIR writable (readOnlyRootFilesystem + the /tmp emptyDir).

`bentoml containerize` needs a Docker engine, which this machine does not have: the Dockerfile
that `bentoml build` generates is checked as text instead.
"""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from PIL import Image

from common.cli import UserError
from common.server import bentoml_serve_argv, free_port, running
from contract.artifact import MANIFEST, MODEL_NAME, ONNX, file_sha256, verify
from contract.latents import latents_for_seed
from contract.pixels import to_uint8

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
CONTRACT_FILES = {f"contract/{p.name}" for p in (ROOT / "contract").glob("*.py")}  # the torch-free artifact contract, whole
HIDDEN_IN_SERVER = ["service", "contract", "export", "artifacts", ".venv"]  # what the served bento must not need from the repo
NOT_IN_THE_IMAGE = {"torch", "torchvision", "torchaudio", "triton", "tensorflow", "onnxruntime"}  # onnxruntime: CPU-only twin
READY_TIMEOUT_S = 120

# Run argv with `home` read-only and each further dir replaced by an empty read-only tmpfs.
ISOLATE = r"""
set -e
home=$1; shift
mount --bind "$home" "$home"
mount -o remount,bind,ro "$home"
while [ "$1" != -- ]; do mount -t tmpfs -o ro,size=4k tmpfs "$1"; shift; done
shift
exec "$@"
"""


def render(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: the manifests are rendered with `kubectl kustomize` (kubectl >= 1.27)")
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def cpu_container() -> dict:
    (deployment,) = [o for o in render(K8S / "overlays" / "cpu") if o["kind"] == "Deployment"]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def cpu_cores(quantity: str) -> int:
    """A CPU quantity as the downward API gives it with divisor 1: rounded up ("1500m" -> 2)."""
    return math.ceil(int(quantity[:-1]) / 1000) if quantity.endswith("m") else math.ceil(float(quantity))


def deployment_env(container: dict) -> dict[str, str]:
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu" and ref.get("divisor", "1") == "1", e
            env[e["name"]] = str(cpu_cores(container["resources"]["limits"]["cpu"]))
    return env


def can_isolate() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


def dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Built:
    tag: str
    path: Path  # the bento dir in the store
    home: Path  # HOME; BENTOML_HOME is home/bentoml
    env: dict[str, str]

    @property
    def info(self) -> dict:
        return yaml.safe_load((self.path / "bento.yaml").read_text())

    def model_tags(self) -> list[str]:
        return [m["tag"] for s in self.info["services"] for m in s["models"]]

    def locked(self) -> dict[str, str]:
        """The lock the image installs (env/python/requirements.txt): name -> version."""
        pins = {}
        for line in (self.path / "env" / "python" / "requirements.txt").read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", "-")):
                continue
            name, sep, version = line.partition("==")
            assert sep, f"not pinned: {line}"
            pins[dist_name(name.split("[")[0])] = version
        return pins


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    home = tmp_path_factory.mktemp("home")
    # A developer's DCGAN_* settings stay out, except the artifact a fresh store registers (the
    # committed artifacts/default unless DCGAN_DEFAULT_ARTIFACT names another).
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCGAN_") or k == "DCGAN_DEFAULT_ARTIFACT"}
    env.update(BENTOML_HOME=str(home / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-o", "tag"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"bentoml build failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    (tag,) = re.findall(r"^__tag__:(\S+)$", out.stdout, re.M)
    name, version = tag.split(":")
    return Built(tag, home / "bentoml" / "bentos" / name / version, home, env)


@pytest.fixture(scope="module")
def image_python(built) -> Path:
    """Python of a fresh venv that holds exactly the bento's lock, as the image's /app/.venv does.

    Less NVIDIA's CUDA/cuDNN wheels: gigabytes of shared libraries that only a GPU loads (nvidia-ml-py,
    which BentoML imports to look for GPUs, stays).
    """
    root = Path(tempfile.mkdtemp(prefix="bento-venv-"))
    lock = root / "requirements.txt"
    lines = (built.path / "env" / "python" / "requirements.txt").read_text().splitlines()
    lock.write_text("\n".join(ln for ln in lines if not ln.startswith("nvidia-") or ln.startswith("nvidia-ml-py")) + "\n")
    uv = [sys.executable, "-m", "uv"]  # the uv `bentoml build` locks with
    for argv in (
        ["venv", "-q", "--python", sys.executable, str(root / "venv")],
        ["pip", "install", "-q", "--python", str(root / "venv" / "bin" / "python"), "-r", str(lock)],
    ):
        out = subprocess.run(uv + argv, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"uv {' '.join(argv[:2])} failed:\n{out.stderr[-3000:]}"
    yield root / "venv" / "bin" / "python"
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class Server:
    url: str
    log: Path
    isolated: bool
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(built, image_python, tmp_path_factory):
    # The pod's /tmp. Short: BentoML puts unix sockets there, and a socket path has at most 107 bytes.
    scratch = Path(tempfile.mkdtemp(prefix="pod-tmp-"))
    log = tmp_path_factory.mktemp("log") / "serve.log"
    port = free_port()
    pod_env = deployment_env(cpu_container())
    # The container's environment: the image's ENV lines (the bento's envs), then the pod's.
    image_env = {e["name"]: e["value"] for e in built.info.get("envs", []) if e.get("stage", "all") != "build"}
    env = {**built.env, **image_env, **pod_env, "HOME": str(built.home), "TMPDIR": str(scratch)}
    cmd = bentoml_serve_argv(port, built.tag, str(image_python))
    isolated = can_isolate()
    if isolated:
        hidden = [str(ROOT / d) for d in HIDDEN_IN_SERVER if (ROOT / d).is_dir()]
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", ISOLATE, "isolate", str(built.home), *hidden, "--", *cmd]
    try:
        with running(cmd, env, log, port, cwd=scratch) as _:
            yield Server(f"http://127.0.0.1:{port}", log, isolated, pod_env)
    except UserError as e:  # raised before the yield only: the server never became ready
        pytest.fail(f"the bento's server: {e}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- what the bento holds -------------------------------------------------------------------------


def test_bento_holds_only_serving_code(built):
    src = built.path / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    service = {f for f in files if f.startswith("service/")}
    page = {f"service/page/{p.name}" for p in (ROOT / "service" / "page").iterdir() if p.is_file()}
    assert "service/entry.py" in service and page <= service, service
    assert all(f.endswith(".py") for f in service - page), service  # code, plus the page's static files
    assert files - service == CONTRACT_FILES | {"bentofile.yaml"}


def test_bento_packs_the_default_model(built):
    from service.settings import SETTINGS  # the artifact `bentoml build` registered on the fresh store

    (tag,) = built.model_tags()
    name, version = tag.split(":")
    assert name == MODEL_NAME
    stored = built.home / "bentoml" / "models" / name / version
    verify(stored)
    assert file_sha256(stored / MANIFEST) == file_sha256(SETTINGS.default_artifact / MANIFEST)


def test_lock_is_pinned_serving_only(built):
    locked = built.locked()
    assert locked["onnxruntime-gpu"] == "1.31.1"
    assert locked["bentoml"] == importlib.metadata.version("bentoml")
    # CUDA 13 and cuDNN 9 come as wheels ([cuda,cudnn] extra): nothing needed from the base image.
    assert locked["nvidia-cuda-runtime"].startswith("13.") and locked["nvidia-cudnn-cu13"].startswith("9.")
    assert {"numpy", "pillow"} <= locked.keys()
    assert not NOT_IN_THE_IMAGE & locked.keys()


def test_lock_covers_every_import_of_the_packed_code(built):
    """Also the imports serving does not reach here (a lazy one, say): each must come from the lock."""
    src = built.path / "src"
    local = {p.name for p in src.iterdir() if p.is_dir()}
    imported = set()
    for py in src.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - local - set(sys.stdlib_module_names) - {"__future__"}
    providers = importlib.metadata.packages_distributions()
    locked = built.locked()
    missing = {m for m in third_party if not {dist_name(d) for d in providers.get(m, [])} & locked.keys()}
    assert not missing, f"imported by the bento but not in its lock: {missing}"
    assert "torch" not in imported


def test_dockerfile(built):
    """What `bentoml containerize` builds: checked as text, there is no Docker engine here."""
    dockerfile = (built.path / "env" / "docker" / "Dockerfile").read_text()
    c = cpu_container()
    (port,) = c["ports"]
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)  # a plain Python base: CUDA comes as wheels
    assert re.search(rf"^EXPOSE {port['containerPort']}$", dockerfile, re.M)
    # The image installs the lock checked above, and runs as the user the manifests name.
    assert re.search(r"pip install -r \$BENTO_PATH/env/python/requirements\.txt", dockerfile)
    assert re.search(r"^USER bentoml$", dockerfile, re.M)
    (deployment,) = [o for o in render(K8S / "overlays" / "cpu") if o["kind"] == "Deployment"]
    uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert re.search(rf"^ARG BENTO_USER_UID={uid}$", dockerfile, re.M)
    # bentofile.yaml's envs become ARG defaults + ENV: CUDA for a Python base, no ORT telemetry files.
    assert re.search(r"^ARG NVIDIA_DRIVER_CAPABILITIES=compute,utility$", dockerfile, re.M)
    assert re.search(r"^ARG ORT_DISABLE_TELEMETRY=1$", dockerfile, re.M)
    assert re.search(r"^ENV ORT_DISABLE_TELEMETRY=\$ORT_DISABLE_TELEMETRY$", dockerfile, re.M)
    assert "torch" not in dockerfile.lower()


# --- the served bento -----------------------------------------------------------------------------


def test_probe_paths_of_the_manifests_answer(server):
    c = cpu_container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["port"] == "http"
        r = httpx.get(server.url + get["path"], timeout=10)
        assert r.status_code == 200, (probe, r.status_code, r.text)


def test_the_page_is_served_from_the_bento(server):
    r = httpx.get(server.url + "/ui/", timeout=10)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"], (r.status_code, r.text[:200])


def test_sample_is_what_onnx_runtime_makes_from_the_packed_model(server, built):
    seed, n = 42, 3
    r = httpx.post(f"{server.url}/sample", json={"seed": seed, "n": n}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    (tag,) = built.model_tags()
    assert (body["seed"], body["n"], body["model"]) == (seed, n, tag)
    served = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))) for png in body["images"]])

    stored = built.home / "bentoml" / "models" / tag.replace(":", "/")
    manifest = json.loads((stored / MANIFEST).read_text())
    session = ort.InferenceSession(str(stored / ONNX), providers=["CPUExecutionProvider"])
    z = latents_for_seed(seed, n, manifest["model"]["nz"])  # (n, nz)
    (images,) = session.run(None, {session.get_inputs()[0].name: z})  # (n, C, H, W)
    expected = to_uint8(images).transpose(0, 2, 3, 1)  # (n, H, W, C)
    if expected.shape[-1] == 1:
        expected = expected[..., 0]  # grayscale PNGs decode to (H, W)
    assert served.shape == expected.shape
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1


def test_info_reflects_the_deployment_env(server):
    info = httpx.get(f"{server.url}/info", timeout=10).json()
    assert info["provider"] == "CPUExecutionProvider"  # no GPU here
    assert info["ort_threads"] == int(server.env["DCGAN_ORT_THREADS"])


def test_metrics_export_what_the_inflight_autoscaler_reads(server):
    httpx.post(f"{server.url}/sample", json={"seed": 1}, timeout=60).raise_for_status()
    hpa = yaml.safe_load((K8S / "components" / "scale-on-inflight" / "hpa.yaml").read_text())
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert re.search(rf'^{name}\{{[^}}]*endpoint="/sample"', metrics, re.M), f"{name} for /sample not in /metrics"


def test_served_under_the_pods_constraints(server):
    if not server.isolated:
        pytest.skip("needs root and `unshare --mount` to make HOME read-only and hide the source tree")
    # The server came up and answered the tests above with only TMPDIR writable and no source tree.
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200


def test_server_log_is_clean(server):
    httpx.get(f"{server.url}/readyz", timeout=10).raise_for_status()
    log = server.log_text()
    assert "Traceback" not in log, log[-4000:]
    assert not re.search(r"\[[WE]:onnxruntime", log), log[-4000:]  # e.g. a telemetry file it cannot write


def test_a_model_version_missing_from_the_bento_stops_startup(built, image_python, tmp_path):
    missing = f"{MODEL_NAME}:notinthisbento"
    env = {**built.env, "DCGAN_MODEL": missing}
    cmd = bentoml_serve_argv(free_port(), built.tag, str(image_python))
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert missing in out.stdout + out.stderr


def test_dcgan_model_at_build_time_picks_the_model_the_image_carries(built, tmp_path):
    """How a deployment points at a model version: `DCGAN_MODEL=name:version bentoml build` (default: the newest)."""
    home = tmp_path / "bentoml"
    shutil.copytree(built.home / "bentoml", home)
    (first,) = built.model_tags()
    # A second registration of the same weights, as another export of the run would make.
    newer = tmp_path / "newer-artifact"
    shutil.copytree(home / "models" / first.replace(":", "/"), newer, ignore=shutil.ignore_patterns("model.yaml"))
    manifest = json.loads((newer / MANIFEST).read_text())
    manifest["created"] = "2100-01-01T00:00:00+00:00"
    (newer / MANIFEST).write_text(json.dumps(manifest))
    env = {**built.env, "BENTOML_HOME": str(home)}
    registered = subprocess.run(
        [sys.executable, "-m", "contract.store", str(newer)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert registered.returncode == 0, registered.stderr
    second = registered.stdout.strip()
    assert second != first

    def packed(extra_env: dict[str, str]) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", "-o", "tag"],
            cwd=ROOT,
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        (tag,) = re.findall(r"^__tag__:(\S+)$", out.stdout, re.M)
        info = yaml.safe_load((home / "bentos" / tag.replace(":", "/") / "bento.yaml").read_text())
        return [m["tag"] for s in info["services"] for m in s["models"]]

    assert packed({"DCGAN_MODEL": first}) == [first]
    assert packed({}) == [second]
