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
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helpers import K8S, kustomize

from common.paths import REPO_ROOT as ROOT

OVERLAYS = ["cpu", "gpu"]
COMPONENTS = K8S / "components"
SCALE_ON_INFLIGHT = COMPONENTS / "scale-on-inflight"
ADAPTER_RULES = SCALE_ON_INFLIGHT / "prometheus-adapter-rules.yaml"  # both autoscaling components' metrics
KSERVE = K8S / "kserve"
# components a cluster adds when it has what they need
OPTIONAL = ["prometheus-operator", "alerts", "network-policy", "ingress", "scale-on-queue"]
KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
OPTIONAL_KINDS = {"PodMonitor", "PrometheusRule", "NetworkPolicy", "Ingress"}
CRD_KINDS = {"PodMonitor", "PrometheusRule"}  # the Prometheus Operator's: not in the Kubernetes schemas
# The recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/common-labels) on every object.
RECOMMENDED_LABELS = {"name", "instance", "version", "component", "part-of", "managed-by"}
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
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


def adapter_rules() -> dict[str, dict]:
    """prometheus-adapter's rules, by the custom metric each exposes."""
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    return {rule["name"]["as"]: rule for rule in rules}


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_gpu_overlay_scales_on_requests_in_flight_and_cpu_on_cpu(overlay, tmp_path):
    hpa = by_kind(kustomize(K8S / "overlays" / overlay))["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]  # one target: the component replaces the CPU target, not adds to it
    if overlay == "cpu":
        assert (metric["type"], metric["resource"]["name"]) == ("Resource", "cpu")
        return
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "dcgan_requests_in_progress"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scale_on_queue_adds_the_queued_images_to_what_the_overlay_scales_on(overlay, tmp_path):
    alone = by_kind(kustomize(K8S / "overlays" / overlay))["HorizontalPodAutoscaler"]["spec"]["metrics"]
    hpa = by_kind(kustomize(users_kustomization(tmp_path, overlay, ["scale-on-queue"])))["HorizontalPodAutoscaler"]
    *kept, queued = hpa["spec"]["metrics"]
    assert kept == alone  # added, not replaced: the HPA takes the larger of the two proposals
    assert queued["type"] == "Pods" and queued["pods"]["metric"]["name"] == "dcgan_queued_images"


def test_every_custom_metric_an_autoscaler_asks_for_has_an_adapter_rule(tmp_path):
    rules = adapter_rules()
    hpa = by_kind(kustomize(users_kustomization(tmp_path, "gpu", ["scale-on-queue"])))["HorizontalPodAutoscaler"]
    asked = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert asked == set(rules) == {"dcgan_requests_in_progress", "dcgan_queued_images"}
    for name, rule in rules.items():
        series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series), name  # the rule reads the series it names
        assert series == name  # the service's own gauge, exposed under its own name (test_deploy_metrics.py: it exists)
        assert re.fullmatch(r"sum\(<<\.Series>>\{<<\.LabelMatchers>>[^}]*\}\) by \(<<\.GroupBy>>\)", rule["metricsQuery"]), name


def test_the_in_flight_rule_counts_the_generation_routes_only():
    """The service labels every route that runs the model by its path and the others route="other": the rule sums
    all but "other" (probes, /metrics, /info and the page do not count)."""
    query = adapter_rules()["dcgan_requests_in_progress"]["metricsQuery"]
    assert re.findall(r"route\s*(!?=~?)\s*\"([^\"]*)\"", query) == [("!=", "other")]


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


def test_every_object_carries_the_recommended_labels(rendered):
    for obj in rendered:
        labels = obj["metadata"].get("labels", {})
        # The alerting rules span every instance (each alert names its own): no instance label of their own.
        expected = RECOMMENDED_LABELS - ({"instance"} if obj["kind"] == "PrometheusRule" else set())
        assert {k.removeprefix("app.kubernetes.io/") for k in labels if k.startswith("app.kubernetes.io/")} >= expected, obj["kind"]
        assert labels["app.kubernetes.io/name"] == "dcgan" and labels["app.kubernetes.io/part-of"] == "dcgan-serving"
        assert labels["app.kubernetes.io/version"] == PROJECT_VERSION  # the project's; the image tag names the bento's
    template = by_kind(rendered)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert {f"app.kubernetes.io/{k}" for k in RECOMMENDED_LABELS} <= template.keys()


def selectors(objects: list[dict]) -> dict[str, dict]:
    """Every pod selector among the objects, by where it is (matchLabels only: the manifests use no expressions)."""
    found = {}
    for o in objects:
        kind, spec = o["kind"], o["spec"]
        where = f"{kind}/{o['metadata']['name']}"
        if kind == "Deployment":
            found[where] = spec["selector"]["matchLabels"]
            for i, c in enumerate(spec["template"]["spec"].get("topologySpreadConstraints", [])):
                found[f"{where} topologySpreadConstraints[{i}]"] = c["labelSelector"]["matchLabels"]
        elif kind == "Service":
            found[where] = spec["selector"]
        elif kind in ("PodDisruptionBudget", "PodMonitor"):
            found[where] = spec["selector"]["matchLabels"]
        elif kind == "NetworkPolicy":
            found[where] = spec["podSelector"]["matchLabels"]
    return found


def test_the_cpu_and_gpu_overlays_run_side_by_side_in_one_namespace(tmp_path):
    """Both overlays with every optional component, applied to one namespace: no object overwrites another (same kind
    and name only where the content is the same), and no selector of one reaches the other's pods."""
    rendered = {}
    for overlay in OVERLAYS:
        (tmp_path / overlay).mkdir()
        rendered[overlay] = kustomize(users_kustomization(tmp_path / overlay, overlay, OPTIONAL))
    named = {o: {(obj["kind"], obj["metadata"]["name"]): obj for obj in objs} for o, objs in rendered.items()}
    for key in named["cpu"].keys() & named["gpu"].keys():
        assert named["cpu"][key] == named["gpu"][key], key  # only the cluster-wide alerting rules are shared
    assert {kind for kind, _ in named["cpu"].keys() & named["gpu"].keys()} == {"PrometheusRule"}
    for own, other in (("cpu", "gpu"), ("gpu", "cpu")):
        objs = by_kind(rendered[own])
        own_pods = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
        other_pods = by_kind(rendered[other])["Deployment"]["spec"]["template"]["metadata"]["labels"]
        found = selectors(rendered[own])
        assert {w.split("/")[0] for w in found} == {"Deployment", "Service", "PodDisruptionBudget", "PodMonitor", "NetworkPolicy"}
        for where, selector in found.items():
            assert selector.items() <= own_pods.items(), where
            assert not selector.items() <= other_pods.items(), f"{own}'s {where} selects {other}'s pods"
        deployment, service = objs["Deployment"]["metadata"]["name"], objs["Service"]["metadata"]["name"]
        assert objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment
        (rule,) = objs["Ingress"]["spec"]["rules"]
        assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {service}


def alert_rules() -> list[dict]:
    (rule,) = kustomize(COMPONENTS / "alerts")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_the_alerting_rules_are_well_formed_and_cover_what_operators_watch():
    """The PrometheusRule CRD's fields, checked as the operator reads them (kubernetes-validate does not know it)."""
    rules = alert_rules()
    assert {r["alert"] for r in rules} == {
        "DcganErrorRate",
        "DcganRefusalRate",
        "DcganLatencyAboveDeadline",
        "DcganGoldenCheckFailed",
        "DcganModelVersionRefused",
        "DcganGeneratorRestarts",
        "DcganPodRestarts",
        "DcganPodsNotReady",
    }
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"} and r["annotations"]["summary"], r["alert"]
        assert "for" not in r or re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")") and r["expr"].count("{") == r["expr"].count("}"), r["alert"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_alerting_rules(tmp_path):
    """Prometheus's own parser: every expression is valid PromQL, every template and duration parses."""
    (rule,) = kustomize(COMPONENTS / "alerts")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    out = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_latency_alert_fires_past_the_service_s_deadline():
    from service.settings import SETTINGS

    (latency,) = [r for r in alert_rules() if r["alert"] == "DcganLatencyAboveDeadline"]
    threshold = float(re.search(r">\s*([\d.]+)\s*$", latency["expr"]).group(1))
    assert threshold == SETTINGS.deadline_ms / 1000
    assert "histogram_quantile(0.99," in latency["expr"]


def kserve_predictor() -> dict:
    (isvc,) = kustomize(KSERVE)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    return isvc["spec"]["predictor"]


# The predictor's fields that are KServe's own; the rest is a Kubernetes PodSpec (inlined by the CRD).
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_kserve_predictor_is_a_valid_pod_spec(version):
    predictor = kserve_predictor()
    assert set(predictor) >= KSERVE_PREDICTOR_FIELDS and predictor["scaleMetric"] in {"cpu", "memory", "concurrency", "rps"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dcgan-predictor"}}
    pod["spec"] = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    kubernetes_validate.validate(pod, version, strict=True)


def test_the_kserve_predictor_runs_the_overlays_pod_on_the_v2_protocol():
    """Port, user, read-only root, drain and grace period as the GPU overlay's pod; probes on the protocol's own paths,
    which the service serves (tests/service/test_deploy_metrics.py asks a running one)."""
    from service.v2 import routes

    predictor = kserve_predictor()
    (c,) = predictor["containers"]
    assert c["name"] == "kserve-container"  # KServe's name for a custom predictor's container
    gpu = overlay_deployment_spec("gpu")
    (gpu_c,) = gpu["containers"]
    assert c["image"] == gpu_c["image"]
    (port,) = c["ports"]
    assert port["containerPort"] == gpu_c["ports"][0]["containerPort"]
    paths = {r.path for r in routes(lambda: None)}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port["containerPort"]}
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/v2/health/ready", "port": port["containerPort"]}, probe
        assert c[probe] | {"httpGet": None} == gpu_c[probe] | {"httpGet": None}, probe
    assert {"/v2/health/live", "/v2/health/ready"} <= paths
    for field in ("securityContext", "terminationGracePeriodSeconds", "enableServiceLinks", "tolerations", "volumes"):
        assert predictor[field] == gpu[field], field
    for field in ("env", "resources", "lifecycle", "securityContext", "volumeMounts"):
        assert c[field] == gpu_c[field], field


def overlay_deployment_spec(overlay: str) -> dict:
    return by_kind(kustomize(K8S / "overlays" / overlay))["Deployment"]["spec"]["template"]["spec"]
