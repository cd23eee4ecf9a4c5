"""Start the peer servers the load test measures the service against, on free loopback ports.

    with serve_mosec(artifact, log_path) as server: ...    # Mosec: POST /sample, as the service's
    with serve_triton(artifact, log_path) as server: ...   # Triton (PyTriton): POST /v2/models/dcgan/infer

Both do the service's per-request work (loadtest/peer_work.py) with their own dynamic batching, configured as
their documentation sets up a batched model; --threads as the service's DCGAN_ORT_THREADS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from common.server import free_port, running
from loadtest.peer_env import triton_env, triton_python

TRITON_MODEL = "dcgan"  # loadtest/triton_server.py's MODEL_NAME (that module imports pytriton: not importable here)
TRITON_READY_TIMEOUT_S = 300  # Triton starts its C++ server, then a Python backend stub per model


def serve_mosec(artifact: Path, log_path: Path, threads: int | None = None, max_wait_ms: int = 1):
    port = free_port()
    argv = [sys.executable, "-m", "loadtest.mosec_server", str(artifact), "--port", str(port), "--max-wait-ms", str(max_wait_ms)]
    argv += ["--threads", str(threads)] if threads else []
    return running(argv, dict(os.environ), log_path, port, ready_path="/")


def serve_triton(artifact: Path, log_path: Path, threads: int | None = None, queue_delay_us: int = 0, progress=print):
    python = triton_python(progress)
    port = free_port()
    argv = [str(python), "-m", "loadtest.triton_server", str(artifact), "--port", str(port), "--queue-delay-us", str(queue_delay_us)]
    argv += ["--threads", str(threads)] if threads else []
    return running(argv, triton_env(python), log_path, port, ready_timeout_s=TRITON_READY_TIMEOUT_S, ready_path="/v2/health/ready")
