"""Bound how long BentoML's adaptive batching holds a batch open waiting for more requests.

Why (bentoml 1.4.40, bentoml/_internal/marshal/dispatcher.py): CorkDispatcher keeps the queued
requests waiting while `n * (wn + 0.001 + o_a) <= 0.95 * Optimizer.wait` (n queued, wn the newest
one's age). Optimizer.wait is the mean, over the last 50 batches, of how long each batch's first
request sat in the queue, refreshed at most every 5 s. Under load that queue time is time spent
behind the busy model (up to max_latency_ms), not time spent waiting for company, yet afterwards it
is applied to a lone request on an idle model: after a burst a lone request waited ~1.9 s, and each
such wait fed the mean again, so it stayed for minutes. max_latency_ms does not cap this wait
(a lone request is never shed while the model is idle); it only bounds the mean indirectly.

BentoML exposes no setting for this wait and builds the dispatcher itself, so the bound is a
subclass of its Optimizer put in place of the original before any dispatcher is built.
"""

from __future__ import annotations

import bentoml
from bentoml._internal.marshal import dispatcher

PATCHED_FOR = "1.4.40"  # the dispatcher read to write this; re-read it before changing the pin


def bound_batch_wait(max_wait_ms: int) -> None:
    """Cap the dispatcher's learned wait at max_wait_ms in this process; call before the service app is built."""
    if bentoml.__version__ != PATCHED_FOR:
        raise RuntimeError(
            f"service/batching.py bounds the batching wait of bentoml {PATCHED_FOR}'s dispatcher, "
            f"but bentoml {bentoml.__version__} is installed: re-check that dispatcher and update the bound"
        )
    cap_s = max_wait_ms / 1000.0

    class BoundedWaitOptimizer(dispatcher.Optimizer):
        def trigger_refresh(self) -> None:
            super().trigger_refresh()
            self.wait = min(self.wait, cap_s)

    dispatcher.Optimizer = BoundedWaitOptimizer  # CorkDispatcher.__init__ looks the name up here
