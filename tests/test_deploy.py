"""deploy/k8s: every overlay renders with the real kustomize (`kubectl kustomize`), every object is
valid against the Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict: unknown fields
fail), and the manifests agree with the service and the image `bentoml containerize` builds.

That the probe paths really answer on the built bento is checked in test_bento.py.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu"]
COMPONENT = K8S / "components" / "scale-on-inflight"
KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
# Oldest and newest Kubernetes minor versions kubernetes-validate ships schemas for.
K8S_VERSIONS = [kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version()]


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: these tests render with `kubectl kustomize` (kubectl >= 1.27 embeds kustomize v5)")
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def with_component(tmp_path: Path, overlay: str) -> Path:
    """A user's kustomization: an overlay plus the scale-on-inflight component (kustomize wants relative paths)."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp_path)],
                "components": [os.path.relpath(COMPONENT, tmp_path)],
            }
        )
    )
    return tmp_path


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = [o["kind"] for o in objects]
    assert sorted(kinds) == sorted(KINDS), kinds
    return {o["kind"]: o for o in objects}


def container(objects: list[dict]) -> dict:
    (c,) = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module", params=OVERLAYS + ["gpu+scale-on-inflight"])
def rendered(request, tmp_path_factory) -> list[dict]:
    if request.param.endswith("+scale-on-inflight"):
        overlay = request.param.split("+")[0]
        return kustomize(with_component(tmp_path_factory.mktemp("user-kustomization"), overlay))
    return kustomize(K8S / "overlays" / request.param)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_kubernetes(rendered, version):
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_a_misspelt_field(rendered):
    """Guards the test above: strict validation really reads the fields."""
    deployment = copy.deepcopy(by_kind(rendered)["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_probes_and_port_match_the_service(rendered):
    from bentoml._internal.configuration.containers import BentoMLContainer

    from service import svc  # torch-free by contract; the import is cheap

    endpoints = svc.config.get("endpoints", {})
    port = svc.config.get("http", {}).get("port") or BentoMLContainer.http.port.get()
    c = container(rendered)
    (http,) = c["ports"]
    assert (http["name"], http["containerPort"]) == ("http", port)
    assert c["livenessProbe"]["httpGet"] == {"path": endpoints.get("livez", "/livez"), "port": "http"}
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": endpoints.get("readyz", "/readyz"), "port": "http"}, probe
    # Liveness must not be able to kill a pod still loading its model: the startup probe covers that window.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120

    objs = by_kind(rendered)
    (service_port,) = objs["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "http"


def test_service_pdb_and_hpa_point_at_the_deployment(rendered):
    objs = by_kind(rendered)
    deployment = objs["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        objs["Service"]["spec"]["selector"],
        objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector and selector.items() <= pod_labels.items(), selector
    target = objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_pod_runs_as_the_image_user_on_a_read_only_root(rendered):
    from bentoml._internal.container.generate import BENTO_UID_GID  # the user `bentoml containerize` creates

    pod = by_kind(rendered)["Deployment"]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False  # else a Service named "bentoml" injects BENTOML_PORT=tcp://...
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == sc["runAsGroup"] == BENTO_UID_GID
    c = container(rendered)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # BentoML's sockets and metrics dir go to the temp dir


def test_resources_requests_and_limits(rendered):
    resources = container(rendered)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys(), kind
    env = {e["name"]: e for e in container(rendered)["env"]}
    # ONNX Runtime's CPU threads follow the pod's CPU limit, not the node's core count.
    assert env["DCGAN_ORT_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_the_drain_fits_the_grace_period_and_agrees_with_the_service(rendered):
    """Kubernetes kills the pod terminationGracePeriodSeconds after preStop begins: preStop, the drain, the generator's
    extra time and the shutdown must all fit, and the readiness probe must notice the drain well before its end."""
    from service import drain
    from service.settings import SETTINGS

    pod = by_kind(rendered)["Deployment"]["spec"]["template"]["spec"]
    c = container(rendered)
    env = {e["name"]: e.get("value") for e in c["env"]}
    drain_s = int(env["DCGAN_DRAIN_TIMEOUT_S"])
    assert drain_s == SETTINGS.drain_timeout_s  # the manifests state the service's default, not another figure
    (sleep, seconds) = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    worst_s = int(seconds) + drain_s + drain.GENERATOR_EXTRA_S + drain.HARD_EXIT_AFTER_S
    assert worst_s < pod["terminationGracePeriodSeconds"], worst_s
    readiness = c["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= drain_s


def test_gpu_overlay_requires_cuda_and_the_cpu_overlay_does_not():
    def env(overlay):
        return {e["name"]: e.get("value") for e in container(kustomize(K8S / "overlays" / overlay))["env"]}

    assert env("gpu")["DCGAN_REQUIRE_CUDA"] == "1"
    assert "DCGAN_REQUIRE_CUDA" not in env("cpu")


def test_gpu_overlay_asks_for_one_gpu_and_cpu_overlay_for_none():
    gpu, cpu = kustomize(K8S / "overlays" / "gpu"), kustomize(K8S / "overlays" / "cpu")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    tolerations = by_kind(gpu)["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert not any("nvidia.com/gpu" in container(cpu)["resources"][k] for k in ("requests", "limits"))
    assert "tolerations" not in by_kind(cpu)["Deployment"]["spec"]["template"]["spec"]


def test_overlays_run_the_image_bentoml_containerize_names():
    """`bentoml containerize NAME:VERSION` tags the image NAME:VERSION; NAME is bentofile.yaml's `name`."""
    bento_name = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["name"]
    for overlay in OVERLAYS:
        image = container(kustomize(K8S / "overlays" / overlay))["image"]
        repository, _, tag = image.rpartition(":")
        assert repository.rsplit("/", 1)[-1] == bento_name and tag, image


def test_scale_on_inflight_uses_the_metric_the_adapter_exposes(tmp_path):
    hpa = by_kind(kustomize(with_component(tmp_path, "gpu")))["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]  # the CPU target is replaced, not kept beside it
    assert metric["type"] == "Pods"
    rules = yaml.safe_load((COMPONENT / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["rules"]["custom"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["name"]["as"] in rule["seriesQuery"]
