"""`python -m loadtest.determinism`: does a seed give the same images alone, under load, and as a prefix of a larger n?

    python -m loadtest.determinism                          # start `bentoml serve` on the committed model, check, stop
    python -m loadtest.determinism --host http://127.0.0.1:3000 --json out/determinism.json

For each of a few (seed, n) it asks POST /sample/raw once on an idle server (the reference), then again
while --clients concurrent clients keep the server batching other seeds and sizes around it, so that its
rows sit at other offsets of larger ONNX Runtime batches; and it asks (seed, 2n) to check that the first n
images are the same (the latents of (seed, n) are a prefix of those of (seed, 2n)). It prints one row per
case: identical bytes or not, and the largest difference in pixel levels. On a CPU every row should be
identical; on CUDA, kernels chosen per batch size may differ in the last bit, which this measures.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path

import httpx
import numpy as np

from common.cli import OneLineErrorParser, UserError, cli_main
from common.files import atomic_write_json
from common.server import REPO, check_loopback, existing, serve_bentoml
from loadtest import prometheus

CASES = ((0, 1), (42, 3), (2**63 - 1, 2), (7, 16), (123456789, 5))
TIMEOUT_S = 60


async def raw(client: httpx.AsyncClient, seed: int, n: int) -> np.ndarray:
    r = await client.post("/sample/raw", json={"seed": seed, "n": n})
    if r.status_code != 200:
        raise UserError(f"POST /sample/raw {{seed: {seed}, n: {n}}} answered {r.status_code}: {r.text[:200]}")
    return np.frombuffer(r.content, np.uint8).reshape(tuple(int(d) for d in r.headers["x-shape"].split(",")))


async def _noise(client: httpx.AsyncClient, stop: asyncio.Event, rng: random.Random) -> int:
    """Other seeds and sizes, back to back, until told to stop: the batches the checked requests land in."""
    sent = 0
    while not stop.is_set():
        r = await client.post("/sample/raw", json={"seed": rng.randrange(2**63), "n": rng.choice((1, 2, 4, 8, 16))})
        sent += r.status_code == 200
    return sent


def _row(seed: int, n: int, what: str, reference: np.ndarray, other: np.ndarray) -> dict:
    diff = int(np.abs(reference.astype(np.int16) - other.astype(np.int16)).max()) if reference.shape == other.shape else None
    return {"seed": seed, "n": n, "check": what, "identical": reference.tobytes() == other.tobytes(), "max_level_diff": diff}


async def check(url: str, clients: int, rounds: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, limits=httpx.Limits(max_connections=clients + 8)) as client:
        info = (await client.get("/info")).json()
        alone = {case: await raw(client, *case) for case in CASES}
        before = prometheus.parse((await client.get("/metrics")).text)
        stop, rng = asyncio.Event(), random.Random(0)
        noise = [asyncio.create_task(_noise(client, stop, random.Random(rng.random()))) for _ in range(clients)]
        await asyncio.sleep(0.5)  # the server is batching by now
        try:
            loaded = [await asyncio.gather(*(raw(client, *case) for case in CASES)) for _ in range(rounds)]
            doubled = await asyncio.gather(*(raw(client, seed, 2 * n) for seed, n in CASES))
        finally:
            stop.set()
            noise_sent = sum(await asyncio.gather(*noise))
        after = prometheus.parse((await client.get("/metrics")).text)
    calls = after.batch_calls - before.batch_calls
    rows = []
    for i, (seed, n) in enumerate(CASES):
        worst = max(
            (_row(seed, n, "", alone[(seed, n)], got[i]) for got in loaded), key=lambda r: (not r["identical"], r["max_level_diff"] or 0)
        )
        rows.append({**worst, "check": f"alone vs under load ({rounds} times)"})
        rows.append(_row(seed, n, f"alone vs the first {n} of n={2 * n} under load", alone[(seed, n)], doubled[i][:n]))
    return {
        "provider": info.get("provider"),
        "model": info.get("model"),
        "model_file": info.get("model_file"),
        "generator": info.get("generator"),
        "clients": clients,
        "noise_requests": noise_sent,
        # Under load, the checked requests shared ONNX Runtime calls with others: images per call meanwhile.
        "images_per_onnx_call_under_load": (after.batch_images - before.batch_images) / calls if calls else None,
        "rows": rows,
        "all_identical": all(r["identical"] for r in rows),
        "max_level_diff": max(r["max_level_diff"] for r in rows),
    }


def table(report: dict) -> str:
    lines = [
        f"provider {report['provider']}, {report['model_file']}, generator {report['generator']}; {report['clients']} clients "
        f"sent {report['noise_requests']} other requests around the checks; ONNX Runtime calls meanwhile held "
        f"{report['images_per_onnx_call_under_load'] or 0:.1f} images on average",
        "",
        "| seed | n | check | identical bytes | max level diff |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['seed']} | {r['n']} | {r['check']} | {'yes' if r['identical'] else 'NO'} | {r['max_level_diff']} |" for r in report["rows"]
    ]
    verdict = "every image identical" if report["all_identical"] else f"largest difference {report['max_level_diff']} levels"
    return "\n".join([*lines, "", verdict])


@cli_main
def main(argv=None) -> None:
    parser = OneLineErrorParser(prog="python -m loadtest.determinism", description=__doc__.split("\n\n")[2])
    parser.add_argument("--artifact", type=Path, default=REPO / "artifacts" / "default", help="artifact to serve (default: %(default)s)")
    parser.add_argument("--host", help="check this running loopback server instead of starting one")
    parser.add_argument(
        "--clients", type=int, default=32, help="concurrent clients asking for other seeds meanwhile (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="times each case is asked under load (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1:
        raise UserError("--clients and --rounds must be >= 1")
    if not args.host and not (args.artifact / "manifest.json").is_file():
        raise UserError(f"no model artifact at {args.artifact} (no manifest.json); pass --artifact DIR or --host URL")
    with tempfile.TemporaryDirectory(prefix="determinism-") as home:
        if args.host:
            server_cm = existing(check_loopback(args.host))
        else:
            server_cm = serve_bentoml(args.artifact, Path(home) / "bentoml", Path(home) / "serve.log")
        with server_cm as server:
            report = asyncio.run(check(server.url, args.clients, args.rounds))
    print(table(report))
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
