"""The monitoring shipped in deploy/ asks a running service only for what it exports: every metric name in an alerting
rule (deploy/k8s/components/alerts), a dashboard panel (deploy/grafana/dcgan.json) or an autoscaler's adapter rule is
one that `bentoml serve service:svc` lists on /metrics after a /sample, or one of kube-state-metrics' named below.
The KServe predictor's probe paths answer there too.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
import yaml
from helpers import K8S, kustomize

from common.paths import REPO_ROOT as ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dcgan.json"
ADAPTER_RULES = K8S / "components" / "scale-on-inflight" / "prometheus-adapter-rules.yaml"
# Not the service's: kube-state-metrics' (its default metric set), which the readiness and restart alerts read.
EXTERNAL_METRICS = {
    "kube_pod_container_status_restarts_total",
    "kube_deployment_spec_replicas",
    "kube_deployment_status_replicas_available",
}
# What is left of a PromQL expression once strings, label matchers, ranges and grouping clauses are gone, and not a
# metric name.
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# The suffixes each metric type's TYPE line stands for, in the text format prometheus_client writes.
SERIES_SUFFIXES = {"counter": ["", "_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count", ""]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, which may hold anything
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    words = re.findall(r"(?<![\w:.$])[A-Za-z_:][\w:]*\b(?!\s*\()", expr)  # identifiers not called as functions
    return {w for w in words if w.lower() not in PROMQL_WORDS}


def test_metric_names_finds_the_names_and_nothing_else():
    """Guards the tests below: the extraction neither misses a name nor takes a function or label for one."""
    expr = (
        'histogram_quantile(0.99, sum by (namespace, le) (rate(a_seconds_bucket{route!="other", x=~"by (y)"}[5m])))'
        " > 2 and on (pod) b_total offset 5m / ignoring (le) sum without (pod) (c) > bool 1e3"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}


def exported_names(metrics_text: str) -> set[str]:
    """Every series name the exposition lists, including the ones a TYPE line announces without samples yet."""
    names = set(re.findall(r"^([A-Za-z_:][\w:]*)(?:\{|\s)", metrics_text, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\w+)$", metrics_text, re.M):
        base = name.removesuffix("_total") if kind == "counter" else name
        names |= {base + suffix for suffix in SERIES_SUFFIXES.get(kind, [""])}
    return names


@pytest.fixture(scope="module")
def exported(service_url) -> set[str]:
    assert httpx.post(f"{service_url}/sample", json={"seed": 1, "n": 2}, timeout=60).status_code == 200
    metrics = httpx.get(f"{service_url}/metrics", timeout=30)
    assert metrics.status_code == 200
    return exported_names(metrics.text)


def alert_exprs() -> dict[str, str]:
    (rule,) = kustomize(K8S / "components" / "alerts")
    return {r["alert"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}


def dashboard_exprs() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {f"{p['title']} {t['refId']}": t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC{...}, LABEL)
            exprs[f"${variable['name']}"] = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]).group(1)
    return exprs


def adapter_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    return {rule["name"]["as"]: rule["seriesQuery"] for rule in rules}


@pytest.mark.parametrize("source", [alert_exprs, dashboard_exprs, adapter_exprs], ids=["alerts", "dashboard", "adapter"])
def test_every_metric_the_monitoring_reads_is_exported(source, exported):
    unknown = {}
    for where, expr in source().items():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        if missing := names - exported - EXTERNAL_METRICS:
            unknown[where] = sorted(missing)
    assert not unknown, f"not on the service's /metrics: {unknown}"


def test_the_kserve_probe_paths_answer(service_url):
    (isvc,) = kustomize(K8S / "kserve")
    (container,) = isvc["spec"]["predictor"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert httpx.get(service_url + container[probe]["httpGet"]["path"], timeout=10).status_code == 200, probe
