"""The ONNX forms of the generator: float32 (torch.onnx dynamo exporter) and float16 weights.

Both files are self-contained (weights inline, no external-data side file), take "z" float32
(batch, nz) with a named dynamic batch axis and return "images" float32 (batch, C, H, W).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto

from contract.artifact import INPUT_NAME, OUTPUT_NAME
from training.models import GeneratorConfig

# Opsets this exporter (torch 2.13 + onnxscript 0.7) writes natively and ONNX Runtime 1.31 runs;
# 18 (the default) is the widest-supported one. Outside the range torch falls back to a version converter.
MIN_OPSET, MAX_OPSET = 18, 25
BATCH_AXIS = "batch"  # the dim_param name of the dynamic batch axis, in both ONNX files

# The converter clamps weights smaller than float16 can hold (|w| < 1e-7) and warns once per weight;
# we count them instead and let the parity check judge the result.
_FP16_CLAMP_WARNING = re.compile(r"the float32 number .* will be truncated to")
# Node metadata the dynamo exporter writes: a Python stack per node, which names the exporting machine's
# source and site-packages paths. The other node props (module names, scopes) stay: they help debugging.
STACK_TRACE_PROP = "pkg.torch.onnx.stack_trace"


def strip_stack_traces(model: onnx.ModelProto) -> int:
    """Drop the per-node Python stack traces (they hold absolute paths); returns how many were removed."""
    removed = 0
    for nodes in [model.graph.node, *(f.node for f in model.functions)]:
        for node in nodes:
            kept = [p for p in node.metadata_props if p.key != STACK_TRACE_PROP]
            removed += len(node.metadata_props) - len(kept)
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    return removed


def write_onnx(module: torch.nn.Module, cfg: GeneratorConfig, path: Path, opset: int, metadata: dict[str, str]) -> None:
    """Export with torch.onnx.export(dynamo=True), stamp metadata props, save as one file."""
    z = torch.zeros(2, cfg.nz)  # example input; batch 2 so the exporter cannot specialise batch to 1
    # The exporter logs a warning per torchvision op it cannot register; torchvision is not used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # progress lines go to stdout even with verbose=False
        program = torch.onnx.export(
            module,
            (z,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"z": {0: torch.export.Dim(BATCH_AXIS)}},  # "z" = forward()'s argument name
            opset_version=opset,
            external_data=False,
            optimize=True,  # constant folding; folds BatchNorm into the following conv
            verbose=False,
        )
    model = program.model_proto
    model.doc_string = "DCGAN generator: z float32 (batch, nz) ~ N(0, 1) -> images float32 (batch, C, H, W) in [-1, 1]"
    onnx.helper.set_model_props(model, metadata)
    strip_stack_traces(model)
    onnx.save_model(model, path, save_as_external_data=False)


def write_fp16(src: Path, dst: Path) -> int:
    """float16 weights and compute, float32 input and output (for GPU serving). Returns how many weights were clamped.

    onnxconverter-common's converter, not ONNX Runtime's bundled one: the latter makes an invalid model
    for this generator (the Resize scale initializer shared by all upsample blocks gets one Cast per use,
    all with the same node name).
    """
    from onnxconverter_common import float16

    model = onnx.load(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    clamped = 0
    for w in caught:
        if issubclass(w.category, UserWarning) and _FP16_CLAMP_WARNING.search(str(w.message)):
            clamped += 1
        else:  # anything else the converter says is passed on unchanged
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    onnx.save_model(half, dst, save_as_external_data=False)
    return clamped


def check_onnx(path: Path, cfg: GeneratorConfig) -> list[str]:
    """The artifact contract for one ONNX file; returns the problems found (empty = ok)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)  # by path: also checks the file loads as saved
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:  # full_check also infers types
        return [f"{path.name}: onnx.checker: {str(e).splitlines()[0]}"]
    model = onnx.load(path, load_external_data=False)
    problems = []
    external = [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if external:
        problems.append(f"{path.name}: weights in external data files ({external[:3]}); the file must be self-contained")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        problems.append(f"{path.name}: opset {opset} < {MIN_OPSET}")

    def signature(values) -> list[tuple]:
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    float32 = TensorProto.FLOAT
    want_in = [(INPUT_NAME, float32, [BATCH_AXIS, cfg.nz])]
    want_out = [(OUTPUT_NAME, float32, [BATCH_AXIS, cfg.channels, cfg.image_size, cfg.image_size])]
    if signature(model.graph.input) != want_in:
        problems.append(f"{path.name}: inputs {signature(model.graph.input)}, expected {want_in} (1 = float32)")
    if signature(model.graph.output) != want_out:
        problems.append(f"{path.name}: outputs {signature(model.graph.output)}, expected {want_out} (1 = float32)")
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in (("nz", cfg.nz), ("image_size", cfg.image_size), ("channels", cfg.channels), ("arch", cfg.arch)):
        if props.get(key) != str(value):
            problems.append(f"{path.name}: metadata {key}={props.get(key)!r}, expected {str(value)!r}")
    return problems
