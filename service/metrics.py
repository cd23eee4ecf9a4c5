"""The service's Prometheus metrics, every label bounded: route (the route table's paths, or "other"), model (a name
of DCGAN_MODELS, or "" for a request refused before it named one), status (an HTTP code), reason (a refusal's kind,
service/errors.py), version (the versions a worker has loaded since it started).

BentoML's own HTTP metrics are turned off (service/entry.py): they label each request with its raw URL path, so
any client could grow /metrics without bound by requesting random paths. `GET /metrics` serves these, summed over
the server's worker processes (BentoML runs each worker with PROMETHEUS_MULTIPROC_DIR set).

    dcgan_requests_total{route,status,model}      requests answered
    dcgan_request_duration_seconds{route,model}   time from the request's first byte in to its answer
    dcgan_requests_in_progress{route}             generation requests admitted and not yet answered
    dcgan_refused_total{route,reason,model}       refusals by design: overloaded, deadline, draining, client_gone,
                                                  body_timeout, unauthorised
    dcgan_queued_images{model}                    images waiting for a generator call
    dcgan_queued_requests{model}                  requests waiting for a generator call
    dcgan_queue_wait_seconds{model}               how long a request waited before its generator call went out
    dcgan_generator_call_seconds{model}           wall time of one generator call (ONNX Runtime, or the generator service)
    dcgan_generator_batch_images{model}           images per generator call: the batches adaptive batching formed
    dcgan_generator_outages_total{model}          times the generator service became unreachable (a worker restarting)
    dcgan_golden_check_ok{model}                  1 when the golden outputs came out within tolerance at load, else 0
    dcgan_generator_info{model,version,model_file,provider}  1 for what each worker serves with now (a GPU pod on CPU
                                                  shows here), 0 for a version it served before a swap
    dcgan_model_loads_total{model,outcome}        versions loaded at run time (outcome "loaded"), or refused by their
                                                  checks or the limits (outcome "refused"; the old version kept serving)
    dcgan_model_onnx_bytes{model}                 size of the ONNX file each model serves with (DCGAN_MAX_MODELS_MB)
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

OTHER = "other"  # the route label of every path that is not a route of the service
REASONS = ("overloaded", "deadline", "draining", "client_gone", "body_timeout", "unauthorised")
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, float("inf"))

REQUESTS = Counter("dcgan_requests", "requests answered, by route, HTTP status and model", ["route", "status", "model"])
DURATION = Histogram("dcgan_request_duration_seconds", "time from a request's arrival to its answer", ["route", "model"], buckets=SECONDS)
IN_PROGRESS = Gauge(
    "dcgan_requests_in_progress", "generation requests admitted and not yet answered", ["route"], multiprocess_mode="livesum"
)
REFUSED = Counter("dcgan_refused", "requests refused by design (429/503/408/401/499), by reason", ["route", "reason", "model"])
QUEUED_IMAGES = Gauge("dcgan_queued_images", "images waiting for a generator call", ["model"], multiprocess_mode="livesum")
QUEUED_REQUESTS = Gauge("dcgan_queued_requests", "requests waiting for a generator call", ["model"], multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("dcgan_queue_wait_seconds", "time a request waited before its generator call went out", ["model"], buckets=SECONDS)
CALL_SECONDS = Histogram("dcgan_generator_call_seconds", "wall time of one generator call", ["model"], buckets=SECONDS)
BATCH_IMAGES = Histogram(
    "dcgan_generator_batch_images",
    "images per generator call: the batches that adaptive batching formed",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, float("inf")),
)
OUTAGES = Counter("dcgan_generator_outages", "times the generator service became unreachable", ["model"])
GOLDEN_OK = Gauge(
    "dcgan_golden_check_ok", "1 when the golden outputs came out within tolerance at load, else 0", ["model"], multiprocess_mode="livemin"
)
GENERATOR_INFO = Gauge(
    "dcgan_generator_info",
    "1 for the model, ONNX file and ONNX Runtime execution provider a worker serves with",
    ["model", "version", "model_file", "provider"],
    multiprocess_mode="livemax",
)
MODEL_LOADS = Counter("dcgan_model_loads", "versions loaded at run time, or refused (the old one kept serving)", ["model", "outcome"])
ONNX_BYTES = Gauge("dcgan_model_onnx_bytes", "size of the ONNX file a model serves with", ["model"], multiprocess_mode="livemax")


class _Collected:
    """Families already collected, in the registry interface generate_latest() reads."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self) -> list:
        return self.families


def _bucket_order(sample) -> tuple:
    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    kind = 0 if sample.name.endswith("_bucket") else 1 if sample.name.endswith("_count") else 2
    return labels, kind, float(sample.labels.get("le", 0))


def exposition() -> tuple[bytes, str]:
    """(the metrics text of every worker of this server, its content type)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        families = list(registry.collect())
        for family in families:  # the collector lists _sum and _count before _bucket; the format wants buckets first
            if family.type == "histogram":
                family.samples.sort(key=_bucket_order)
        return generate_latest(_Collected(families)), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
