"""research.profile_entry: samples sorted into layers by their innermost known frame; bad flags are one line."""

from __future__ import annotations

import subprocess
import sys

from helpers import assert_one_line_error

from research.profile_entry import layer_of


def test_a_sample_belongs_to_its_innermost_known_frame():
    loop = ["_run_module_as_main (<frozen runpy>:198)", "Runner.run (asyncio/runners.py:118)"]
    api = [*loop, "Api._answer (service/api.py:220)"]
    assert layer_of(api + ["png_bytes (service/images.py:42)", "compress (zlib:1)"]) == "encoding (PNG, base64, JSON)"
    assert layer_of(api + ["latents_for_seed (contract/latents.py:16)"]) == "latents"
    assert layer_of(api) == "service request handling"
    assert layer_of([*loop, "dispatch (service/bentoml_fixes.py:190)"]) == "BentoML and Starlette stack"
    assert layer_of([*loop, "RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:522)"]).startswith("uvicorn")
    assert layer_of(loop).startswith("event loop")


def test_bad_flags_are_one_line():
    for argv in (["--users", "0"], ["--checkout", "/nonexistent-checkout"]):
        result = subprocess.run([sys.executable, "-m", "research.profile_entry", *argv], capture_output=True, text=True, timeout=120)
        assert_one_line_error(result, argv[0])
