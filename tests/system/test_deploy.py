"""deploy/k8s: every overlay renders with the real kustomize (`kubectl kustomize`), every object is
valid against the Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict: unknown fields
fail), and the manifests agree with the service, each other and the images `python -m deploy.image` builds.

That the probe paths really answer in the image, run as the manifests run it, is checked in test_image.py.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helpers import K8S, kustomize

OVERLAYS = ["cpu", "gpu"]
COMPONENTS = K8S / "components"
SCALE_ON_INFLIGHT = COMPONENTS / "scale-on-inflight"
OPTIONAL = ["prometheus-operator", "network-policy", "ingress"]  # components a cluster adds when it has what they need
KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
OPTIONAL_KINDS = {"PodMonitor", "NetworkPolicy", "Ingress"}
CRD_KINDS = {"PodMonitor"}  # the Prometheus Operator's: not in the Kubernetes schemas
# Oldest and newest Kubernetes minor versions kubernetes-validate ships schemas for.
K8S_VERSIONS = [kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version()]


def users_kustomization(tmp_path: Path, overlay: str, components: list[str]) -> Path:
    """A user's kustomization: an overlay plus components (kustomize wants relative paths)."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp_path)],
                "components": [os.path.relpath(COMPONENTS / c, tmp_path) for c in components],
            }
        )
    )
    return tmp_path


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = [o["kind"] for o in objects]
    assert len(set(kinds)) == len(kinds) and KINDS <= set(kinds) <= KINDS | OPTIONAL_KINDS, kinds
    return {o["kind"]: o for o in objects}


def container(objects: list[dict]) -> dict:
    (c,) = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module", params=OVERLAYS + ["cpu+scale-on-inflight", "gpu+" + "+".join(OPTIONAL)])
def rendered(request, tmp_path_factory) -> list[dict]:
    overlay, *components = request.param.split("+")
    if components:
        return kustomize(users_kustomization(tmp_path_factory.mktemp("user-kustomization"), overlay, components))
    return kustomize(K8S / "overlays" / overlay)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_kubernetes(rendered, version):
    for obj in rendered:
        if obj["kind"] not in CRD_KINDS:
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


def test_each_overlay_runs_its_own_image():
    """`python -m deploy.image` tags each image as `bentoml containerize` would, NAME:VERSION with NAME the variant's bento
    name (bentofile.yaml's `name` for the GPU image, with -cpu for the CPU image)."""
    from deploy.image.variants import variant

    for overlay in OVERLAYS:
        image = container(kustomize(K8S / "overlays" / overlay))["image"]
        repository, _, tag = image.rpartition(":")
        assert repository.rsplit("/", 1)[-1] == variant(overlay).bento_name and tag, image


def adapter_rule() -> dict:
    (rule,) = yaml.safe_load((SCALE_ON_INFLIGHT / "prometheus-adapter-rules.yaml").read_text())["rules"]["custom"]
    return rule


def generation_endpoints_regex() -> str:
    """The `endpoint=~"..."` matcher of the adapter rule (PromQL anchors it at both ends, as fullmatch does)."""
    (regex,) = re.findall(r'endpoint=~"([^"]+)"', adapter_rule()["metricsQuery"])
    return regex


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_gpu_overlay_scales_on_requests_in_flight_and_cpu_on_cpu(overlay, tmp_path):
    hpa = by_kind(kustomize(K8S / "overlays" / overlay))["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]  # one target: the component replaces the CPU target, not adds to it
    if overlay == "cpu":
        assert (metric["type"], metric["resource"]["name"]) == ("Resource", "cpu")
        return
    rule = adapter_rule()
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)  # the adapter renames the gauge it reads


def test_the_adapter_rule_counts_every_generation_route_and_nothing_else():
    """Every route that runs the model counts toward the in-flight metric; probes, /metrics, /info and the page do not.
    tests/service/test_service.py checks the same regex against the labels a running service exports."""
    from service.responses import ROUTES
    from service.v2 import INFER_PATH

    regex = generation_endpoints_regex()
    for route in [*ROUTES, INFER_PATH]:
        assert re.fullmatch(regex, route), route
    for route in ["/readyz", "/livez", "/metrics", "/info", "/ui/", "/v2/health/ready", "/v2/models/dcgan", "/docs"]:
        assert not re.fullmatch(regex, route), route


def test_gpu_rollout_needs_no_spare_gpu_and_keeps_one_pod_serving():
    objs = by_kind(kustomize(K8S / "overlays" / "gpu"))
    rolling = objs["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (0, 1)  # the new pod takes the old one's GPU
    pdb = objs["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] <= rolling["maxUnavailable"]  # a drain takes no more pods at once than a rollout
    assert objs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] > rolling["maxUnavailable"]  # one pod always serves


def test_pods_spread_over_nodes_and_zones(rendered):
    pod = by_kind(rendered)["Deployment"]["spec"]["template"]
    spread = pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for c in spread:
        assert c["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert c["whenUnsatisfiable"] == "ScheduleAnyway"  # a one-zone cluster still schedules every replica


def test_optional_components_point_at_the_pods_and_port(tmp_path):
    objs = by_kind(kustomize(users_kustomization(tmp_path, "gpu", OPTIONAL)))
    deployment, service = objs["Deployment"], objs["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (port,) = pod["spec"]["containers"][0]["ports"]
    monitor = objs["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    annotations = pod["metadata"]["annotations"]  # the annotation-based set-up scrapes the same port and path
    assert endpoint["port"] == port["name"] and endpoint["path"] == annotations["prometheus.io/path"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    policy = objs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == [port["name"]]
    (ingress_rule,) = objs["Ingress"]["spec"]["rules"]
    (path,) = ingress_rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_image_digest_replaces_the_tag(overlay, tmp_path):
    """The README's way to pin what runs: kustomize `images:` with a digest (what `kustomize edit set image` writes)."""
    digest = "sha256:" + "ab" * 32
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    kustomization = tree / "overlays" / overlay / "kustomization.yaml"
    config = yaml.safe_load(kustomization.read_text())
    (entry,) = config["images"]
    repository = "registry.internal:5000/ml/" + entry["newName"].rsplit("/", 1)[-1]
    config["images"] = [{"name": entry["name"], "newName": repository, "digest": digest}]
    kustomization.write_text(yaml.safe_dump(config))
    assert container(kustomize(kustomization.parent))["image"] == f"{repository}@{digest}"
