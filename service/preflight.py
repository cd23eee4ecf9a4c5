"""Start-up checks of the served model, run once before any worker starts: a bad model stops `bentoml serve`.

`bentoml serve` runs the generator's on_deployment hook once, in its own process, before it starts
the workers; an exception there ends start-up with one line and a non-zero exit. A check that fails
later, in a worker, would only make BentoML restart that worker, again and again. So the hook runs
here, in order:

  1. the stored model is the one registered: its manifest's sha256 is the one recorded then;
  2. every file matches its manifest hash;
  3. in a child process (so that the serving process holds no ONNX Runtime session, nor a CUDA
     context): the ONNX file loads, on the provider the generator will use, its input and output
     match the manifest (names, nz), one warm-up inference returns the manifest's image shape with
     finite values, the golden outputs recorded at export come out within their tolerance on that
     provider (contract/golden_outputs.py), and with DCGAN_REQUIRE_CUDA=1 that provider is CUDA.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bentoml.exceptions import BentoMLException

from common.paths import REPO_ROOT
from contract.artifact import ArtifactError
from contract.store import check_registered

SRC_ROOT = REPO_ROOT  # holds service/ and contract/, in the repo and in a bento
TIMEOUT_S = 300  # a CUDA session's first load can take a while
VERDICT = "start-up check failed: "  # how the child marks its one line among whatever else reaches stderr


def check_stored_model(stored) -> str:
    """All checks above for a resolved BentoML model; BentoMLException (one line) on the first that fails."""
    from service.model_source import verified_manifest

    tag = str(stored.tag)
    try:
        check_registered(stored)
    except ArtifactError as e:
        raise BentoMLException(f"model {tag} is unusable: {e}") from None
    verified_manifest(stored.path, tag)
    try:
        child = subprocess.run(
            [sys.executable, "-m", "service.preflight", str(stored.path), tag],
            cwd=SRC_ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise BentoMLException(f"the start-up check of model {tag} did not finish in {TIMEOUT_S} s (a hung CUDA start?)") from None
    if child.returncode != 0:
        # ONNX Runtime may log to stderr too: the child marks its own verdict.
        verdicts = [line.removeprefix(VERDICT) for line in child.stderr.splitlines() if line.startswith(VERDICT)]
        raise BentoMLException(verdicts[-1] if verdicts else f"the start-up check of model {tag} exited with {child.returncode}")
    return child.stdout.strip()


def check_runtime(model_dir: Path, tag: str) -> str:
    """Step 3, in this process: load, compare with the manifest, warm up, check the provider."""
    from service.model_source import verified_manifest
    from service.runtime import CUDA, open_checked
    from service.settings import SETTINGS

    manifest = verified_manifest(model_dir, tag)
    try:
        runtime, golden = open_checked(model_dir, manifest, SETTINGS.ort_threads)
    except BentoMLException:
        raise
    except Exception as e:  # onnxruntime raises its own types for a file it cannot load
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BentoMLException(f"model {tag}: ONNX Runtime cannot load it ({type(e).__name__}: {first}); re-export the artifact") from None
    if SETTINGS.require_cuda and runtime.provider != CUDA:
        raise BentoMLException(
            f"DCGAN_REQUIRE_CUDA=1 but ONNX Runtime would serve {tag} on {runtime.provider}: "
            "no CUDA driver, no GPU visible to this container, or the CUDA provider failed to load (see its log)"
        )
    checked = (
        f"gives its {golden['images']} golden images within {golden['max_level_diff']} of {golden['tolerance_levels']} levels"
        if golden["checked"]
        else "has no golden outputs to check"
    )
    return f"{tag}: {runtime.model_file} loads, matches its manifest, warms up and {checked} on {runtime.provider}"


def main() -> None:
    model_dir, tag = sys.argv[1], sys.argv[2]
    try:
        print(check_runtime(Path(model_dir), tag))
    except BentoMLException as e:
        print(VERDICT + str(e).splitlines()[0], file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
