"""Read BentoML's adaptive batching histogram from a /metrics page (Prometheus text format).

The generator service observes, for every ONNX Runtime call, how many requests its dispatcher
merged into that call. The difference of two scrapes gives the mean over a load level:
(sum_after - sum_before) / (count_after - count_before) requests per call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BATCH_HISTOGRAM = "bentoml_service_adaptive_batch_size"
_SAMPLE = re.compile(rf"^{BATCH_HISTOGRAM}_(sum|count)(?:\{{[^}}]*\}})?\s+(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class BatchCounter:
    requests: float  # histogram _sum: requests that went through batched calls
    calls: float  # histogram _count: batched ONNX Runtime calls

    def mean_since(self, earlier: "BatchCounter") -> float | None:
        """Mean requests per call between two scrapes; None if no call happened."""
        calls = self.calls - earlier.calls
        return (self.requests - earlier.requests) / calls if calls > 0 else None


def batch_counter(metrics_text: str) -> BatchCounter | None:
    """Sum over every label set (method, worker) of the histogram's _sum and _count; None if absent."""
    totals = {"sum": 0.0, "count": 0.0}
    found = False
    for kind, value in _SAMPLE.findall(metrics_text):
        totals[kind] += float(value)
        found = True
    return BatchCounter(totals["sum"], totals["count"]) if found else None
