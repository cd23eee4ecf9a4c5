"""Memory of each loaded model: the entry worker's RSS serving 1, 2 and 4 models, idle and after a burst on each.

    python -m research.model_memory                      # the committed default model, registered under 1, 2, 4 names
    python -m research.model_memory --artifact DIR --counts 1,2,3

Each count gets a fresh server (`bentoml serve service:svc`, a store of its own, DCGAN_MODELS of that many names for
the same artifact: each name is a model of its own, with its own ONNX Runtime session, threads and queue). The
entry worker's resident memory is read when it is ready, and again after every model has answered requests of
DCGAN_MAX_N images (ONNX Runtime's CPU arena grows to the largest batch it ran). The table's last column is the
growth per model added, against one model. docs/serving.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil

from common.paths import REPO_ROOT
from common.server import serve_bentoml

MIB = 1 << 20


def entry_worker(processes: list[psutil.Process]) -> psutil.Process:
    """The entry worker of a one-worker, in-process server: the descendant that runs `_bentoml_impl.worker.service`."""
    for p in processes:
        try:
            if "_bentoml_impl.worker.service" in " ".join(p.cmdline()):
                return p
        except psutil.NoSuchProcess:
            continue
    raise SystemExit("error: no entry worker among the server's processes")


def measure(artifact: Path, count: int, workdir: Path, burst_n: int) -> tuple[float, float]:
    """(RSS MiB when ready, RSS MiB after a burst of `burst_n` images on every model) with `count` models loaded."""
    home = workdir / f"home-{count}"
    names = ["dcgan-generator", *(f"dcgan-copy{i}" for i in range(1, count))]
    for name in names[1:]:  # the default name is registered by the server itself
        env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
        subprocess.run([sys.executable, "-m", "contract.store", str(artifact), "--name", name], env=env, check=True, capture_output=True)
    env = {"DCGAN_MODELS": ",".join(names), "DCGAN_MAX_MODELS": str(max(count, 1))}
    with serve_bentoml(artifact, home, workdir / f"serve-{count}.log", env) as server:
        worker = entry_worker(server.processes())
        idle = worker.memory_info().rss / MIB
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for name in names:
                for seed in range(4):
                    r = http.post("/sample/raw", json={"seed": seed, "n": burst_n, "model": name})
                    r.raise_for_status()
        return idle, worker.memory_info().rss / MIB


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m research.model_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=REPO_ROOT / "artifacts" / "default", help="model artifact (default: %(default)s)")
    parser.add_argument("--counts", default="1,2,4", help="how many models to load, one server each (default: %(default)s)")
    parser.add_argument("--burst-n", type=int, default=64, help="images per request of the burst (default: %(default)s)")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="model-memory-") as tmp:
        for count in counts:
            rows.append((count, *measure(args.artifact, count, Path(tmp), args.burst_n)))
    base = rows[0]
    print(f"| models | entry worker RSS ready (MiB) | after n={args.burst_n} on each (MiB) | per model added, after (MiB) |")
    print("|---|---|---|---|")
    for count, idle, loaded in rows:
        per = (loaded - base[2]) / (count - base[0]) if count != base[0] else float("nan")
        print(f"| {count} | {idle:.0f} | {loaded:.0f} | {'' if count == base[0] else f'{per:.0f}'} |")


if __name__ == "__main__":
    main()
