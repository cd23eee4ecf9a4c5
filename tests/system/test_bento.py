"""The built bento: what `bentoml build` packs, from the repo into a fresh BENTOML_HOME, as on a fresh clone.

The service registers the committed default artifact itself and the bento packs it, with a lock of serving
packages only and BentoML's generated Dockerfile. The image built from it, and served as the manifests run
it, is tested in test_image.py.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import overlay_deployment

from common.paths import REPO_ROOT as ROOT
from common.server import bentoml_serve_argv, free_port, running
from contract.artifact import MANIFEST, MODEL_NAME, file_sha256, verify

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run

CONTRACT_FILES = {f"contract/{p.name}" for p in (ROOT / "contract").glob("*.py")}  # the torch-free artifact contract, whole
NOT_IN_THE_IMAGE = {"torch", "torchvision", "torchaudio", "triton", "tensorflow", "onnxruntime"}  # onnxruntime: CPU-only twin


def cpu_pod() -> dict:
    return overlay_deployment("cpu")["spec"]["template"]["spec"]


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


# --- what the bento holds -------------------------------------------------------------------------


def test_bento_holds_only_serving_code(built):
    src = built.path / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    service = {f for f in files if f.startswith("service/")}
    page = {f"service/page/{p.name}" for p in (ROOT / "service" / "page").iterdir() if p.is_file()}
    assert "service/entry.py" in service and page <= service, service
    assert all(f.endswith(".py") for f in service - page), service  # code, plus the page's static files
    assert files - service == CONTRACT_FILES | {"bentofile.yaml", *(f"common/{name}.py" for name in ("__init__", "cli", "paths"))}


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
    """What every builder builds from (test_image.py builds and runs it with podman), checked as text."""
    dockerfile = (built.path / "env" / "docker" / "Dockerfile").read_text()
    pod = cpu_pod()
    (port,) = pod["containers"][0]["ports"]
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)  # a plain Python base: CUDA comes as wheels
    assert re.search(rf"^EXPOSE {port['containerPort']}$", dockerfile, re.M)
    # The image installs the lock checked above, and runs as the user the manifests name.
    assert re.search(r"pip install -r \$BENTO_PATH/env/python/requirements\.txt", dockerfile)
    assert re.search(r"^USER bentoml$", dockerfile, re.M)
    uid = pod["securityContext"]["runAsUser"]
    assert re.search(rf"^ARG BENTO_USER_UID={uid}$", dockerfile, re.M)
    # bentofile.yaml's envs become ARG defaults + ENV: CUDA for a Python base, no ORT telemetry files.
    assert re.search(r"^ARG NVIDIA_DRIVER_CAPABILITIES=compute,utility$", dockerfile, re.M)
    assert re.search(r"^ARG ORT_DISABLE_TELEMETRY=1$", dockerfile, re.M)
    assert re.search(r"^ENV ORT_DISABLE_TELEMETRY=\$ORT_DISABLE_TELEMETRY$", dockerfile, re.M)
    assert "torch" not in dockerfile.lower()
    # The empty $BENTOML_HOME directories BentoML needs on the read-only root (deploy/image/setup.sh).
    assert re.search(r"^RUN chmod \+x \./env/docker/script__\w+ && \./env/docker/script__\w+$", dockerfile, re.M)


def test_the_dockerfile_is_trimmed_for_serving_and_nothing_else(built):
    """deploy.image builds BentoML's Dockerfile with three lines changed (deploy/image/dockerfile.py): no compiler, git or gpg,
    Python packages from wheels only and no uv cache, and with --local-base the stand-in base's own name in FROM."""
    from deploy.image.base import local_name
    from deploy.image.dockerfile import UNUSED_SYSTEM_PACKAGES, for_serving

    generated = (built.path / "env" / "docker" / "Dockerfile").read_text()
    for base in (None, local_name("3.11")):
        trimmed = for_serving(generated, base)
        pairs = list(zip(generated.splitlines(), trimmed.splitlines(), strict=True))
        changed = [(old, new) for old, new in pairs if old != new]
        assert len(changed) == (3 if base else 2), changed
        (apt,) = [new for old, new in changed if "apt-get install" in old]
        assert not set(UNUSED_SYSTEM_PACKAGES) & set(apt.split()) and {"ca-certificates", "bash"} <= set(apt.split())
        assert apt.endswith("&& apt-get clean && rm -rf /var/lib/apt/lists/*")
        (uv,) = [new for old, new in changed if "pip install -r" in old]
        assert uv.endswith("pip install --only-binary :all: --no-cache -r $BENTO_PATH/env/python/requirements.txt")
        expected_from = base or "python:3.11-slim"
        assert re.search(rf"^FROM {re.escape(expected_from)} AS base-container$", trimmed, re.M)


def test_a_default_build_serves_with_the_generator_as_a_service_too(built, tmp_path):
    """The GPU overlay runs the image with DCGAN_GENERATOR=service; the default build records the in-process graph
    (service/bentoml_fixes.py, fix 5). test_image.py runs the GPU image so; this needs no container engine."""
    env = {**built.env, "DCGAN_GENERATOR": "service"}
    port = free_port()
    with running(bentoml_serve_argv(port, built.tag), env, tmp_path / "serve.log", port, cwd=tmp_path) as server:
        r = httpx.post(f"{server.url}/sample", json={"seed": 3, "n": 2}, timeout=60)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{server.url}/info", timeout=10).json()["generator"] == "service"


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
    # A set of models (DCGAN_MODELS) is packed whole: each is a model of the bento.
    other = subprocess.run(
        [sys.executable, "-m", "contract.store", str(newer), "--name", "dcgan-other"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert other.returncode == 0, other.stderr
    assert packed({"DCGAN_MODELS": f"{first},dcgan-other"}) == [first, other.stdout.strip()]
