"""A peer to measure against: Mosec serving POST /sample with the service's per-request work.

    python -m loadtest.mosec_server ARTIFACT --port 8000 [--threads T] [--max-batch 128] [--max-wait-ms 1]

Mosec's Rust HTTP front queues requests and hands them in batches to one Python worker process, which
decodes each JSON body, runs one ONNX Runtime call for the whole batch (loadtest/peer_work.py) and
encodes each response as the service does (base64 PNGs in compact JSON). As Mosec's documentation sets
up a batched model: one worker, `max_batch_size`, `max_wait_time` (its shortest is 1 ms: 0 means 10 ms).
Readiness: GET / (Mosec's own; the load test warms the server up before it measures).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from common.cli import OneLineErrorParser, cli_main
from loadtest.peer_work import PeerModel, add_peer_arguments, base64_pngs
from loadtest.response_checks import MAX_SEED

_ours, sys.argv = sys.argv, sys.argv[:1]  # Mosec parses the command line when imported (and answers --help itself)
from mosec import Server, ValidationError, Worker  # noqa: E402

sys.argv = _ours

ENV_ARTIFACT, ENV_THREADS = "DCGAN_PEER_ARTIFACT", "DCGAN_PEER_THREADS"  # how the worker processes get their settings
MAX_N = 64


class Sample(Worker):
    def __init__(self) -> None:
        super().__init__()
        threads = int(os.environ[ENV_THREADS]) if os.environ.get(ENV_THREADS) else None
        self.model = PeerModel(Path(os.environ[ENV_ARTIFACT]), threads)

    def deserialize(self, data: bytes) -> tuple[int, int]:
        try:
            body = json.loads(data)
            seed, n = body["seed"], body.get("n", 1)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValidationError('expected a JSON body {"seed": S, "n": N}') from None
        if not (type(seed) is int and type(n) is int and 0 <= seed <= MAX_SEED and 1 <= n <= MAX_N):
            raise ValidationError(f"seed must be an integer in [0, 2**63 - 1] and n in [1, {MAX_N}]")
        return seed, n

    def forward(self, data: list[tuple[int, int]]) -> list[dict]:
        """One batch of requests -> their responses, from one ONNX Runtime call."""
        out = []
        for (seed, n), images in zip(data, self.model.batch(data), strict=True):
            _, h, w, c = images.shape
            out.append(
                {"seed": seed, "n": n, "model": self.model.model, "width": w, "height": h, "channels": c, "images": base64_pngs(images)}
            )
        return out

    def serialize(self, data: dict) -> bytes:
        return json.dumps(data, separators=(",", ":")).encode()  # Mosec's default pretty-prints (indent=2)


@cli_main
def main(argv=None) -> None:
    parser = OneLineErrorParser(prog="python -m loadtest.mosec_server", description=__doc__.split("\n\n")[2])
    add_peer_arguments(parser, "Mosec's max_batch_size")
    parser.add_argument("--max-wait-ms", type=int, default=1, help="Mosec's max_wait_time, >= 1 (default: %(default)s)")
    args = parser.parse_args(argv)
    PeerModel(args.artifact, 1)  # a bad artifact stops here, with one line, before any worker starts
    os.environ[ENV_ARTIFACT] = str(args.artifact.resolve())
    os.environ[ENV_THREADS] = str(args.threads or "")
    sys.argv = [sys.argv[0], "--address", "127.0.0.1", "--port", str(args.port), "--log-level", "warning"]  # Mosec reads its own
    server = Server()
    server.append_worker(Sample, num=1, max_batch_size=args.max_batch, max_wait_time=args.max_wait_ms, route="/sample")
    server.run()


if __name__ == "__main__":
    main()
