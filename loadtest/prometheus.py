"""Read what the service's /metrics page (Prometheus text format) says about a load level.

Two scrapes, before and after a level, give over that level:
  - images per batch and requests per batch: the images in ONNX Runtime calls and the client requests
    answered (the entry's /sample), per call; the calls and their images are counted by the service's
    dcgan_generator_batch_images histogram (one observation per call, where the model runs);
  - requests per generator call (DCGAN_GENERATOR=service): /sample / /generate, how many requests the
    entry merged into each internal call (service/coalesce.py);
  - server-side mean duration of each endpoint: the entry's /sample (everything the server does; the
    service's dcgan_request_duration_seconds, every answer) and the generator's /generate (queueing for a
    batch + inference + its own HTTP handling; BentoML's histogram, 200s) with DCGAN_GENERATOR=service.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

BATCH_HISTOGRAM = "dcgan_generator_batch_images"
DURATION_HISTOGRAM = "bentoml_service_request_duration_seconds"  # the generator service's (BentoML's own metrics)
ROUTE_HISTOGRAM = "dcgan_request_duration_seconds"  # the entry's, by route (service/metrics.py)
ROUTE_ANSWERS = "dcgan_requests_total"  # the entry's answers, by route and status


@dataclass(frozen=True)
class Scrape:
    batch_calls: float = 0.0  # histogram _count: ONNX Runtime calls so far
    batch_images: float = 0.0  # histogram _sum: the images in them
    # endpoint -> (seconds, count) of its requests, e.g. "/sample" (every answer), "/generate" (200s)
    durations: dict[str, tuple[float, float]] = field(default_factory=dict)
    ok: dict[str, float] = field(default_factory=dict)  # route -> its 200 answers so far


def parse(metrics_text: str) -> Scrape:
    """Sum each series over its label sets (workers, methods); durations only for HTTP 200.

    A page that is not in the Prometheus text format (a server without /metrics answers 404) says nothing: Scrape().
    """
    batch_calls = batch_images = 0.0
    durations: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    ok: dict[str, float] = defaultdict(float)
    try:
        samples = [s for family in text_string_to_metric_families(metrics_text) for s in family.samples]
    except ValueError:
        return Scrape()
    for name, labels, value, *_ in samples:
        if name == f"{BATCH_HISTOGRAM}_count":
            batch_calls += value
        elif name == f"{BATCH_HISTOGRAM}_sum":
            batch_images += value
        elif name in (f"{DURATION_HISTOGRAM}_sum", f"{DURATION_HISTOGRAM}_count") and labels.get("http_response_code") == "200":
            durations[labels.get("endpoint", "?")][name.endswith("_count")] += value
        elif name in (f"{ROUTE_HISTOGRAM}_sum", f"{ROUTE_HISTOGRAM}_count"):
            durations[labels.get("route", "?")][name.endswith("_count")] += value
        elif name == ROUTE_ANSWERS and labels.get("status") == "200":
            ok[labels.get("route", "?")] += value
    return Scrape(batch_calls, batch_images, {k: (v[0], v[1]) for k, v in durations.items()}, dict(ok))


def _count(before: Scrape, after: Scrape, endpoint: str) -> float:
    return after.durations.get(endpoint, (0.0, 0.0))[1] - before.durations.get(endpoint, (0.0, 0.0))[1]


def level_figures(before: Scrape, after: Scrape) -> dict:
    """What happened between two scrapes: batch sizes and server-side mean durations (None where nothing happened)."""
    requests = after.ok.get("/sample", 0.0) - before.ok.get("/sample", 0.0)
    generate_calls = _count(before, after, "/generate")
    ort_calls = after.batch_calls - before.batch_calls
    figures = {"mean_batch_requests": None, "mean_batch_images": None, "requests_per_generator_call": None}
    if ort_calls > 0 and requests > 0:
        figures["mean_batch_requests"] = requests / ort_calls
        figures["mean_batch_images"] = (after.batch_images - before.batch_images) / ort_calls
    if generate_calls > 0 and requests > 0:
        figures["requests_per_generator_call"] = requests / generate_calls
    for endpoint, key in (("/sample", "server_sample_ms"), ("/generate", "server_generate_ms")):
        s0, c0 = before.durations.get(endpoint, (0.0, 0.0))
        s1, c1 = after.durations.get(endpoint, (0.0, 0.0))
        figures[key] = 1000 * (s1 - s0) / (c1 - c0) if c1 > c0 else None
    return figures
