"""deploy/k8s rendered with the real kustomize (`kubectl kustomize`), for the tests that read the manifests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from common.paths import REPO_ROOT

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
