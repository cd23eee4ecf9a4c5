"""How an artifact's generator.onnx runs on a CPU: the session options the service and its benchmarks share."""

from __future__ import annotations

import onnxruntime as ort


def cpu_session_options(threads: int) -> ort.SessionOptions:
    """Options for a CPU session with `threads` intra-op threads, for a chain-shaped graph like the generator."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # one conv at a time uses every core we were given
    opts.inter_op_num_threads = 1  # the graph is a chain: no parallel branches to run
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads spin by default; that burns the cores that HTTP and PNG encoding need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts
