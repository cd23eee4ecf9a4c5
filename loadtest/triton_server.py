"""A peer to measure against: Triton Inference Server (PyTriton) serving the model "dcgan" with the service's work.

    python -m loadtest.triton_server ARTIFACT --port 8000 [--threads T] [--max-batch 128] [--queue-delay-us 0]
    (run by loadtest.run with the interpreter of .venv-peers/triton: see loadtest/peer_env.py)

Triton's C++ HTTP front speaks the Open Inference Protocol (KServe v2): POST /v2/models/dcgan/infer with INT64
inputs "seed" and "n" of shape [1, 1]; its dynamic batcher gathers requests (at most --max-batch, waiting at most
--queue-delay-us) and hands them to one Python infer function, which runs one ONNX Runtime call for all of them
(loadtest/peer_work.py) and returns each request's images as a BYTES tensor [1, n] of base64 PNGs, the strings
the service's /sample returns. Ready when GET /v2/health/ready answers 200.
"""

from __future__ import annotations

import logging

import numpy as np

try:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig
except ImportError:  # it lives in an environment of its own (loadtest/peer_env.py)
    Triton = None

from common.cli import OneLineErrorParser, UserError, cli_main
from common.server import free_port
from loadtest.peer_work import PeerModel, add_peer_arguments, base64_pngs

MODEL_NAME = "dcgan"


def infer_function(model: PeerModel):
    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        """One dynamic batch of requests (each seed [1, 1], n [1, 1]) -> one response each, from one ONNX Runtime call."""
        asked = [(int(r["seed"][0, 0]), int(r["n"][0, 0])) for r in requests]
        return [
            {"images": np.array([[s.encode() for s in base64_pngs(images)]], dtype=np.bytes_)} for images in model.batch(asked)
        ]  # (1, n)

    return infer


@cli_main
def main(argv=None) -> None:
    parser = OneLineErrorParser(prog="python -m loadtest.triton_server", description=__doc__.split("\n\n")[2])
    add_peer_arguments(parser, "requests per dynamic batch, at most")
    parser.add_argument(
        "--queue-delay-us", type=int, default=0, help="the dynamic batcher's max_queue_delay_microseconds (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if Triton is None:
        raise UserError(
            "nvidia-pytriton is not installed in this Python: run this with .venv-peers/triton/bin/python "
            "(loadtest.run --peers triton makes it)"
        )
    model = PeerModel(args.artifact, args.threads)
    logging.basicConfig(level=logging.WARNING)
    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1", grpc_port=free_port(), metrics_port=free_port()
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer_function(model),
            inputs=[Tensor(name="seed", dtype=np.int64, shape=(1,)), Tensor(name="n", dtype=np.int64, shape=(1,))],
            outputs=[Tensor(name="images", dtype=bytes, shape=(-1,))],
            config=ModelConfig(max_batch_size=args.max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us)),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
