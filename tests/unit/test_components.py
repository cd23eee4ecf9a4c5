"""Latent components (models.ComponentLatent, `--components K`): the layer, the DCGAN generator behind it,
its export (every form, float16 included), the toy benchmark's flag, and bad values."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import assert_one_line_error

from contract.artifact import MANIFEST, ONNX, ONNX_FP16
from contract.latents import latents_for_seed
from export.build import export_run
from research.toy import main as toy_main
from training.models import ComponentLatent, GeneratorConfig, build_generator, init_weights
from training.run import main as train_main
from training.rundir import load_generator, save_generator


def test_one_hot_of_the_argmax_and_the_rest_passed_through():
    z = torch.tensor([[0.1, 2.0, -1.0, 0.5, 7.0], [3.0, -2.0, 1.0, -0.5, -7.0]])  # K = 3, d = 2
    out = ComponentLatent(3)(z)
    assert torch.equal(out, torch.tensor([[0.0, 1.0, 0.0, 0.5, 7.0], [1.0, 0.0, 0.0, -0.5, -7.0]]))


def test_components_of_standard_normal_latents_are_uniform():
    z = torch.randn(50_000, 14, generator=torch.Generator().manual_seed(0))
    counts = ComponentLatent(10)(z)[:, :10].sum(0)
    assert counts.sum() == 50_000  # exactly one component per latent
    assert (counts - 5_000).abs().max() < 300  # binomial sd ~67: 4.5 sd


@pytest.mark.parametrize("arch", ["upsample", "convtranspose"])
def test_the_generator_reads_the_selector_coordinates_only_through_their_argmax(arch):
    cfg = GeneratorConfig(arch=arch, nz=16, image_size=8, ngf=4, components=4)
    torch.manual_seed(0)
    G = build_generator(cfg).eval()  # PyTorch's default init: outputs far from 0
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    z[:, :4] = torch.tensor([3.0, 0.0, 0.0, 0.0])  # component 0 for all
    same = z.clone()
    same[:, 1:4] = torch.tensor([2.9, -5.0, 1.0])  # other values, component still 0
    other = z.clone()
    other[:, 2] = 4.0  # component 2
    with torch.no_grad():
        assert torch.equal(G(z), G(same))
        assert (G(z) - G(other)).abs().amax() > 1e-2
    assert "latent.index" not in G.state_dict()  # no weights: state dicts as without components


def test_a_components_generator_exports_with_parity_in_every_form(tmp_path):
    cfg = GeneratorConfig(nz=16, image_size=32, ngf=8, components=5)
    G = build_generator(cfg)
    init_weights(G, torch.Generator().manual_seed(0))
    run = tmp_path / "run"
    save_generator(run, cfg, G.eval())
    (run / "config.json").write_text(json.dumps({"generator": cfg.to_dict(), "command": ["test"]}))
    assert load_generator(run)[0].components == 5
    out, manifest = export_run(run, tmp_path / "artifact", fp16=True)  # fp16 required: a failure raises
    assert (out / ONNX_FP16).exists() and json.loads((out / MANIFEST).read_text()) == manifest
    props = {p.key: p.value for p in onnx.load(out / ONNX).metadata_props}
    assert props["components"] == "5"
    z = latents_for_seed(3, 64, 16)
    got = ort.InferenceSession(str(out / ONNX), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
    with torch.no_grad():
        want = G(torch.from_numpy(z)).numpy()
    assert np.abs(got - want).max() < 1e-5


def test_training_with_components_records_them(tmp_path):
    assert (
        train_main(
            [
                "--ngf",
                "8",
                "--ndf",
                "8",
                "--batch-size",
                "8",
                "--quiet",
                "--steps",
                "2",
                "--components",
                "4",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "run" / "generator.json").read_text())["config"]["components"] == 4


@pytest.mark.parametrize("value", ["1", "100", "-1"])
def test_bad_components_are_one_line(capsys, value):
    with pytest.raises(SystemExit) as e:
        train_main(["--components", value, "--steps", "1"])
    assert_one_line_error((e.value.code, capsys.readouterr().err), "error: --components must be 0 (off) or 2..99")


def test_toy_components_from_the_cli(tmp_path, capsys):
    out = tmp_path / "toy.json"
    assert (
        toy_main(["--mixture", "grid", "--methods", "gan", "--steps", "20", "--seeds", "0", "--components", "25", "--json", str(out)]) == 0
    )
    run = json.loads(out.read_text())["grid"]["runs"][0]
    assert run["components"] == 25 and 0 <= run["high_quality"] <= 1
    with pytest.raises(SystemExit) as e:
        toy_main(["--components", "1"])
    assert e.value.code == 2 and "--components must be 0 (off) or >= 2" in capsys.readouterr().err
