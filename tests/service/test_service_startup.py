"""Start-up: the service is torch-free, and a bad model or setting stops `bentoml serve` with one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import service_env

from common.paths import REPO_ROOT as REPO


@pytest.mark.parametrize("generator", ["inprocess", "service"])
def test_service_package_never_imports_torch(service_artifact, tmp_path, generator):
    """Every module under service/, and the services built from them, without torch in sys.modules."""
    code = (
        "import importlib, pkgutil, sys, service\n"
        "for m in pkgutil.iter_modules(service.__path__): importlib.import_module('service.' + m.name)\n"
        f"assert service.svc.name == 'dcgan' and ('generator' in service.svc.dependencies) == {generator == 'service'}\n"
        "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not leaked, leaked[:5]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=service_env(tmp_path / "bentoml", service_artifact, {"DCGAN_GENERATOR": generator}),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def _corrupt(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _one_line_error(code: int, output: str, *fragments: str) -> None:
    assert code != 0, output
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    for fragment in fragments:
        assert fragment in lines[0], output


def test_corrupted_default_artifact_stops_startup(serve_to_exit, service_artifact, tmp_path):
    artifact = shutil.copytree(service_artifact, tmp_path / "artifact")
    _corrupt(artifact / "generator.onnx")
    _one_line_error(*serve_to_exit(artifact_dir=artifact), str(artifact / "generator.onnx"), "does not match its manifest hash")


def test_default_artifact_with_a_missing_file_stops_startup(serve_to_exit, service_artifact, tmp_path):
    artifact = shutil.copytree(service_artifact, tmp_path / "artifact")
    (artifact / "generator.onnx").unlink()
    _one_line_error(*serve_to_exit(artifact_dir=artifact), "generator.onnx", "missing")


def test_no_model_and_no_default_artifact_stops_startup(serve_to_exit, tmp_path):
    missing = tmp_path / "no-such-artifact"
    _one_line_error(*serve_to_exit(artifact_dir=missing), "no 'dcgan-generator' model", str(missing), "python -m export")


def test_pinned_model_missing_from_the_store_stops_startup(serve_to_exit):
    _one_line_error(*serve_to_exit({"DCGAN_MODEL": "dcgan-generator:nosuchversion"}), "dcgan-generator:nosuchversion")


def _registered(service_artifact, tmp_path) -> tuple[Path, str, Path]:
    """(BENTOML_HOME, tag, stored folder) of the artifact registered by `python -m contract.store` in a fresh store."""
    home = tmp_path / "bentoml"
    done = subprocess.run(
        [sys.executable, "-m", "contract.store", str(service_artifact)],
        cwd=REPO,
        env=service_env(home, service_artifact),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    tag = done.stdout.strip()
    return home, tag, home / "models" / "dcgan-generator" / tag.split(":")[1]


def test_corrupted_model_in_the_store_stops_startup(serve_to_exit, service_artifact, tmp_path):
    """A registered model whose stored file was altered afterwards: refused before any worker starts."""
    home, tag, stored = _registered(service_artifact, tmp_path)
    stored = stored / "generator.onnx"
    os.chmod(stored, 0o644)
    _corrupt(stored)
    _one_line_error(*serve_to_exit(bentoml_home=home), f"model {tag} is unusable", "does not match its manifest hash")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DCGAN_MAX_N", "many"),
        ("DCGAN_MAX_INFLIGHT", "0"),
        ("DCGAN_MAX_BATCH", "0"),
        ("DCGAN_GENERATOR_CALLS", "0"),
        ("DCGAN_DEADLINE_MS", "0"),
        ("DCGAN_REQUIRE_CUDA", "maybe"),
        ("DCGAN_GENERATOR", "remote"),
        ("DCGAN_ACCESS_LOG", "loud"),
    ],
)
def test_bad_setting_stops_startup(serve_to_exit, name, value):
    _one_line_error(*serve_to_exit({name: value}), name)


def _edited(service_artifact, tmp_path, edit) -> Path:
    """A copy of the artifact whose manifest `edit` changed (its file hashes still match: only the checks below can tell)."""
    artifact = shutil.copytree(service_artifact, tmp_path / "artifact")
    manifest = json.loads((artifact / "manifest.json").read_text())
    edit(artifact, manifest)
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    return artifact


def test_manifest_whose_nz_does_not_match_the_graph_stops_startup(serve_to_exit, service_artifact, tmp_path):
    artifact = _edited(service_artifact, tmp_path, lambda _, m: m["model"].update(nz=50))
    _one_line_error(*serve_to_exit(artifact_dir=artifact), "generator.onnx takes z", "[batch, 50]", "re-export")


def test_graph_whose_output_shape_is_not_the_manifests_stops_startup(serve_to_exit, service_artifact, tmp_path):
    artifact = _edited(service_artifact, tmp_path, lambda _, m: m["model"].update(image_size=64))
    _one_line_error(*serve_to_exit(artifact_dir=artifact), "warm-up inference", "expected (1, 1, 64, 64)")


def test_corrupt_onnx_file_with_a_matching_hash_stops_startup(serve_to_exit, service_artifact, tmp_path):
    def corrupt(artifact, manifest):
        (artifact / "generator.onnx").write_bytes(b"not an ONNX model at all")
        manifest["files"]["generator.onnx"]["sha256"] = hashlib.sha256(b"not an ONNX model at all").hexdigest()

    artifact = _edited(service_artifact, tmp_path, corrupt)
    _one_line_error(*serve_to_exit(artifact_dir=artifact), "ONNX Runtime cannot load it", "re-export")


def test_stored_model_rewritten_after_registration_stops_startup(serve_to_exit, service_artifact, tmp_path):
    """Files and manifest changed together in the store pass the hash check; the registered manifest hash does not."""
    home, tag, stored = _registered(service_artifact, tmp_path)
    manifest = json.loads((stored / "manifest.json").read_text())
    manifest["parity"] = {"rows": []}  # what someone hiding a failed parity check would do
    os.chmod(stored / "manifest.json", 0o644)
    (stored / "manifest.json").write_text(json.dumps(manifest))
    _one_line_error(*serve_to_exit(bentoml_home=home), f"model {tag} is unusable", "not the one registered")


def test_cuda_required_on_a_machine_without_it_stops_startup(serve_to_exit):
    """What the GPU overlay sets: a GPU pod whose CUDA provider does not load refuses to serve on the CPU."""
    if _cuda_serves():
        pytest.skip("this machine serves on CUDA: the refusal cannot be shown here")
    _one_line_error(*serve_to_exit({"DCGAN_REQUIRE_CUDA": "1"}), "DCGAN_REQUIRE_CUDA=1", "CPUExecutionProvider")


def _cuda_serves() -> bool:
    import onnxruntime as ort

    from service.runtime import CUDA, cuda_driver_present

    return CUDA in ort.get_available_providers() and cuda_driver_present()


def test_golden_outputs_out_of_tolerance_stop_startup(serve_to_exit, service_artifact, tmp_path):
    """The export's golden images, regenerated before any worker starts: one 3-level change in the batch of 8 stops it."""

    def shift(artifact, manifest):
        images = np.load(artifact / "golden.npy", allow_pickle=False)
        value = int(images[2 + 5, 4, 4, 0])  # case (7, 8) starts after the two lone images
        images[2 + 5, 4, 4, 0] = value + 3 if value <= 252 else value - 3
        np.save(artifact / "golden.npy", images, allow_pickle=False)
        manifest["files"]["golden.npy"]["sha256"] = hashlib.sha256((artifact / "golden.npy").read_bytes()).hexdigest()
        manifest["files"]["golden.npy"]["bytes"] = (artifact / "golden.npy").stat().st_size

    artifact = _edited(service_artifact, tmp_path, shift)
    _one_line_error(
        *serve_to_exit(artifact_dir=artifact), "golden outputs: seed 7 at batch size 8", "by 3 levels (tolerance 1", "CPUExecutionProvider"
    )
