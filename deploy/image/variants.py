"""The two images of one project: `gpu` is bentofile.yaml as written (onnxruntime-gpu with its CUDA and
cuDNN wheels; it also runs on CPU nodes), `cpu` the same bento with ONNX Runtime's CPU-only build of the
same version instead, and so no CUDA library.

The CPU bentofile is derived here rather than kept beside the other, so the two cannot drift apart. Only
the Python packages (and the name) differ: the generated Dockerfiles are the same up to the package
install, so the two images share their lower layers (base, system packages, uv, the venv) in the build
cache, in a registry and on a node. The CPU image keeps NVIDIA_DRIVER_CAPABILITIES for that reason; it
means nothing without the NVIDIA container runtime and CUDA libraries.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.cli import UserError
from common.paths import REPO_ROOT

ROOT = REPO_ROOT
BENTOFILE = ROOT / "bentofile.yaml"
VARIANTS = ("cpu", "gpu")
GPU_RUNTIME = "onnxruntime-gpu"
CPU_RUNTIME = "onnxruntime"


@dataclass(frozen=True)
class Variant:
    name: str  # "cpu" or "gpu"
    bentofile: dict  # what `bentoml build -f` reads

    @property
    def bento_name(self) -> str:
        """Also the image's repository name, as `bentoml containerize` names it."""
        return self.bentofile["name"]


def load_bentofile(path: Path = BENTOFILE) -> dict:
    return yaml.safe_load(path.read_text())


def variant(name: str, bentofile: dict | None = None) -> Variant:
    gpu = bentofile if bentofile is not None else load_bentofile()
    if name == "gpu":
        return Variant("gpu", gpu)
    if name == "cpu":
        return Variant("cpu", cpu_bentofile(gpu))
    raise UserError(f"unknown image variant {name!r}: choose from {', '.join(VARIANTS)}")


def cpu_bentofile(gpu: dict) -> dict:
    """The GPU bentofile with onnxruntime-gpu[...]==V replaced by onnxruntime==V, under the name NAME-cpu."""
    cpu = copy.deepcopy(gpu)
    cpu["name"] = f"{gpu['name']}-cpu"
    cpu["description"] = f"{gpu['description']} CPU-only image: no CUDA libraries."
    packages = cpu["python"]["packages"]
    runtimes = [i for i, p in enumerate(packages) if p.split("[")[0].split("=")[0].strip() == GPU_RUNTIME]
    if len(runtimes) != 1 or "==" not in packages[runtimes[0]]:
        raise UserError(f"{BENTOFILE.name}: expected one pinned {GPU_RUNTIME}[...]==VERSION in python.packages, found {packages}")
    (i,) = runtimes
    packages[i] = f"{CPU_RUNTIME}=={packages[i].split('==', 1)[1]}"
    return cpu
