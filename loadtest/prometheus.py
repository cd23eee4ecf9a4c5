"""Read what the service's /metrics page (Prometheus text format) says about a load level.

Two scrapes, before and after a level, give over that level:
  - images per batch and requests per batch: the images in ONNX Runtime calls and the client requests
    answered (the entry's /sample), per call; the calls and their images are counted by the service's
    dcgan_generator_batch_images histogram (one observation per call, where the model runs);
  - requests per generator call (DCGAN_GENERATOR=service): /sample / /generate, how many requests the
    entry merged into each internal call (service/coalesce.py);
  - server-side mean duration of each endpoint: the entry's /sample (everything the server does)
    and the generator's /generate (queueing for a batch + inference + its own HTTP handling).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

BATCH_HISTOGRAM = "dcgan_generator_batch_images"
DURATION_HISTOGRAM = "bentoml_service_request_duration_seconds"


@dataclass(frozen=True)
class Scrape:
    batch_calls: float = 0.0  # histogram _count: ONNX Runtime calls so far
    batch_images: float = 0.0  # histogram _sum: the images in them
    # endpoint -> (seconds, count) of successful (200) requests, e.g. "/sample", "/generate"
    durations: dict[str, tuple[float, float]] = field(default_factory=dict)


def parse(metrics_text: str) -> Scrape:
    """Sum each series over its label sets (workers, methods); durations only for HTTP 200.

    A page that is not in the Prometheus text format (a server without /metrics answers 404) says nothing: Scrape().
    """
    batch_calls = batch_images = 0.0
    durations: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
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
    return Scrape(batch_calls, batch_images, {k: (v[0], v[1]) for k, v in durations.items()})


def _count(before: Scrape, after: Scrape, endpoint: str) -> float:
    return after.durations.get(endpoint, (0.0, 0.0))[1] - before.durations.get(endpoint, (0.0, 0.0))[1]


def level_figures(before: Scrape, after: Scrape) -> dict:
    """What happened between two scrapes: batch sizes and server-side mean durations (None where nothing happened)."""
    requests, generate_calls = _count(before, after, "/sample"), _count(before, after, "/generate")
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
