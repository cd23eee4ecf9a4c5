"""research/gpu_stage.py: the parts that carry packages to a GPU machine are checked, joined and unpacked intact."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from common.cli import UserError
from research import gpu_stage


def _stage(tmp_path, monkeypatch, wheels: dict[str, bytes], part_bytes: int) -> dict:
    """A stage like `pack` writes: the wheels in one tar, cut into parts of part_bytes, and its manifest."""
    stage = tmp_path / "stage"
    monkeypatch.setattr(gpu_stage, "STAGE", stage)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in wheels.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    parts = []
    for i in range(0, len(whole), part_bytes):
        chunk = whole[i : i + part_bytes]
        folder = stage / f"part-{len(parts) + 1:02d}"
        folder.mkdir(parents=True)
        (folder / "chunk").write_bytes(chunk)
        parts.append({"path": f"{folder.name}/chunk", "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {
        "python": "3.12",
        "requirements": [],
        "wheels": sorted(wheels),
        "tar_sha256": hashlib.sha256(whole).hexdigest(),
        "parts": parts,
    }
    (stage / "manifest.json").write_text(json.dumps(manifest))
    return manifest


WHEELS = {"a_pkg-1.0-py3-none-any.whl": b"a" * 5000, "b-2.0-cp312-cp312-manylinux_2_28_x86_64.whl": bytes(range(256)) * 40}


def test_parts_join_into_the_packed_wheels(tmp_path, monkeypatch):
    manifest = _stage(tmp_path, monkeypatch, WHEELS, part_bytes=4096)
    assert len(manifest["parts"]) > 3
    gpu_stage.join(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.whl")} == WHEELS
    assert not (tmp_path / "out" / "wheels.tar").exists()


def test_a_damaged_or_missing_part_is_named(tmp_path, monkeypatch):
    manifest = _stage(tmp_path, monkeypatch, WHEELS, part_bytes=4096)
    second = gpu_stage.STAGE / manifest["parts"][1]["path"]
    data = bytearray(second.read_bytes())
    data[7] ^= 1
    second.write_bytes(bytes(data))
    with pytest.raises(UserError, match="part part-02/chunk is damaged"):
        gpu_stage.join(tmp_path / "out")
    second.unlink()
    with pytest.raises(UserError, match="part part-02/chunk has not arrived"):
        gpu_stage.join(tmp_path / "out2")


def test_the_stack_is_the_project_s_without_torch():
    reqs = gpu_stage.stack()
    assert any(r.startswith("onnxruntime-gpu==") for r in reqs) and any(r.startswith("bentoml==") for r in reqs)
    assert any(r.startswith("mlxtend") for r in reqs) and any(r.startswith("locust") for r in reqs)
    assert not any(r.startswith("torch") for r in reqs)
    assert gpu_stage.project_name("onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl") == "onnxruntime-gpu"
    assert {"torch", "numpy", "onnxruntime"} <= gpu_stage.machine_has() and "bentoml" not in gpu_stage.machine_has()
