"""The simple alternative: one FastAPI process, the generator in torch eager, one request at a time.

    python -m loadtest.baseline MODEL --port 8000     (MODEL: a training run dir or a model artifact)

What a user would write without a serving framework, kept to compare against (loadtest.run
--baseline). Same API shape as the service's POST /sample, same latents and PNG encoding, so the
comparison measures the serving design, not the payload. The handler is `async def` and runs the
model inline: requests are served strictly one after another, with no batching.
"""

from __future__ import annotations

import base64

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

from common.cli import OneLineErrorParser, cli_main
from contract.latents import latents_for_seed
from contract.pixels import to_nhwc_uint8
from loadtest.torch_eager import load_eager
from service.images import png_bytes  # torch-free, light: the service's own PNG encoder


class SampleRequest(BaseModel):
    seed: int = Field(ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=64)


def make_app(model_path: str, threads: int | None = None) -> FastAPI:
    generator = load_eager(model_path)
    if threads:
        torch.set_num_threads(threads)
    app = FastAPI(title="DCGAN baseline: FastAPI + torch eager")

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"ready": True, "model": generator.source}

    @app.post("/sample")
    async def sample(req: SampleRequest) -> dict:
        z = torch.from_numpy(latents_for_seed(req.seed, req.n, generator.nz))  # (n, nz)
        with torch.inference_mode():
            images = generator.module(z).numpy()  # (n, C, H, W) in [-1, 1]
        pixels = to_nhwc_uint8(images)  # (n, H, W, C) uint8
        _, h, w, c = pixels.shape
        encoded = [base64.b64encode(png_bytes(p)).decode("ascii") for p in pixels]
        return {"seed": req.seed, "n": req.n, "model": generator.source, "width": w, "height": h, "channels": c, "images": encoded}

    return app


@cli_main
def main(argv=None) -> None:
    parser = OneLineErrorParser(prog="python -m loadtest.baseline", description=__doc__.split("\n\n")[2])
    parser.add_argument("model", metavar="MODEL", help="training run dir (generator.json) or model artifact (generator.pt2)")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own, one per core)")
    args = parser.parse_args(argv)
    uvicorn.run(make_app(args.model, args.threads), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
