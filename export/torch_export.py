"""The PyTorch forms of the generator: TorchScript (for libtorch / C++) and a torch.export program (.pt2).

TorchScript is deprecated upstream in favour of torch.export; we still write it because libtorch
loads it from C++ with no Python. Only its own deprecation warnings are silenced, and only around
the calls that raise them.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from export.onnx_export import BATCH_AXIS


@contextlib.contextmanager
def _torchscript_deprecation_silenced():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


def write_torchscript(module: torch.nn.Module, nz: int, path: Path) -> None:
    """torch.jit.trace: the generator has no data-dependent control flow, so tracing captures it whole."""
    z = torch.zeros(2, nz)  # batch 2: the traced view() reads the batch size from z, it is not baked in
    with torch.no_grad(), _torchscript_deprecation_silenced():
        traced = torch.jit.trace(module, (z,))
        torch.jit.save(traced, str(path))


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with _torchscript_deprecation_silenced():
        return torch.jit.load(str(path), map_location="cpu").eval()


def write_program(module: torch.nn.Module, nz: int, path: Path) -> None:
    """torch.export with a dynamic batch axis; plain tensors are stored as raw bytes, not pickles."""
    z = torch.zeros(2, nz)
    with torch.no_grad():
        program = torch.export.export(module, (z,), dynamic_shapes={"z": {0: torch.export.Dim(BATCH_AXIS)}})
    strip_stack_traces(program)
    torch.export.save(program, str(path))


def strip_stack_traces(program: torch.export.ExportedProgram) -> int:
    """Drop each node's Python stack trace (it names the exporting machine's paths); returns how many were removed."""
    removed = 0
    for node in program.graph.nodes:
        removed += node.meta.pop("stack_trace", None) is not None
    return removed


def load_program(path: Path) -> torch.export.ExportedProgram:
    return torch.export.load(str(path))
