"""Full training state for --resume, as safetensors + JSON (no pickle).

Everything that decides the next step is saved: G, D, EMA weights, both Adam states, the step,
the current epoch's data order and every RNG state. Resuming on CPU with the same seed ends
bit-identical to an uninterrupted run.

Under torchrun (training/distributed.py) rank 0 writes it: all of the state is alike on every rank
but each rank's global RNG (dropout), so those are gathered: rank 0's under the single-process
keys rng.torch / rng.cuda, rank r's under rng.rank<r>.torch / rng.rank<r>.cuda, and the JSON says
world_size. A single-process checkpoint is unchanged (no world_size: 1).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.cli import UserError
from training import rundir


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    """Adam state tensors go into `tensors`; the rest (param groups) is returned as JSON."""
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for name, value in st.items():
            tensors[f"{prefix}.state.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return {"param_groups": sd["param_groups"], "state_ids": sorted(sd["state"])}


def _unflatten_optimizer(prefix: str, meta: dict, tensors: dict) -> dict:
    state = {}
    for idx in meta["state_ids"]:
        head = f"{prefix}.state.{idx}."
        state[idx] = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
    return {"state": state, "param_groups": meta["param_groups"]}


def save(
    run_dir: Path,
    step: int,
    epoch: int,
    position: int,
    order: torch.Tensor,
    modules: dict,
    optimizers: dict,
    data_rng: torch.Generator,
    keep: int = 2,
    rank_rngs: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write checkpoints/step-N.{safetensors,json}; keep the newest `keep` checkpoints.

    rank_rngs: under torchrun, every rank's {"torch": state, "cuda": state} in rank order (the
    caller is rank 0, whose own state is saved as in one process).
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"{name}.{k}"] = v
    opt_meta = {name: _flatten_optimizer(name, o, tensors) for name, o in optimizers.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.data"] = data_rng.get_state()
    tensors["data.order"] = order
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"step": step, "epoch": epoch, "position": position, "modules": sorted(modules), "optimizers": opt_meta}
    if rank_rngs:
        meta["world_size"] = len(rank_rngs)
        for rank, states in enumerate(rank_rngs[1:], start=1):
            tensors.update({f"rng.rank{rank}.{name}": state for name, state in states.items()})
    folder = Path(run_dir) / rundir.CHECKPOINTS
    stem = folder / f"step-{step:08d}"
    rundir.save_weights(stem, tensors, meta)
    for old in sorted(folder.glob("step-*.json"))[:-keep]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return stem


def latest(run_dir: Path) -> Path:
    folder = Path(run_dir) / rundir.CHECKPOINTS
    stems = sorted(folder.glob("step-*.json"))
    if not stems:
        raise UserError(f"{run_dir} has no checkpoints to resume from (looked in {folder})")
    return stems[-1].with_suffix("")


def step_of(stem: Path) -> int:
    """The step a checkpoint holds, from its name (step-00001234)."""
    return int(Path(stem).name.split("-", 1)[1])


def load(stem: Path, modules: dict, optimizers: dict, data_rng: torch.Generator, rank: int = 0, world_size: int = 1) -> dict:
    """Restore modules, optimizers and RNGs in place (this rank's global RNG); returns {step, epoch, position, order}."""
    meta, tensors = rundir.load_weights(stem, f"checkpoint {stem}")
    saved_world = meta.get("world_size", 1)
    if saved_world != world_size:
        how = f"torchrun with {saved_world} processes in all" if saved_world > 1 else "one process (no torchrun)"
        raise UserError(
            f"checkpoint {stem} was written by {saved_world} process(es), not {world_size}: the global batch "
            f"and the data shards would change; resume it with {how}"
        )
    _restore(stem, meta, tensors, modules, optimizers)
    own = "rng." if rank == 0 else f"rng.rank{rank}."
    torch.set_rng_state(tensors[own + "torch"])
    data_rng.set_state(tensors["rng.data"])
    if own + "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[own + "cuda"])
    return {"step": meta["step"], "epoch": meta["epoch"], "position": meta["position"], "order": tensors["data.order"]}


def _restore(stem: Path, meta: dict, tensors: dict, modules: dict, optimizers: dict, keep_groups: bool = False) -> None:
    """Load the modules' weights and the optimizers' state; keep_groups: keep each optimizer's own
    hyperparameters (lr, betas) and take only its per-parameter state (Adam's moments and step)."""
    try:
        for name, m in modules.items():
            head = f"{name}."
            m.load_state_dict({k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)})
        for name, o in optimizers.items():
            sd = _unflatten_optimizer(name, meta["optimizers"][name], tensors)
            if keep_groups:
                sd["param_groups"] = o.state_dict()["param_groups"]
            o.load_state_dict(sd)
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"checkpoint {stem} does not match this run's networks ({str(e).splitlines()[0]})") from None


def load_networks(stem: Path, modules: dict, optimizers: dict) -> dict:
    """For a fine-tune (--init-from): the weights and Adam moments of a checkpoint, nothing of its schedule.

    The step count, data order and RNG streams stay this run's own, and so do the optimizers'
    hyperparameters. Returns the checkpoint's JSON (its step, its sha256).
    """
    meta, tensors = rundir.load_weights(stem, f"checkpoint {stem}")
    _restore(stem, meta, tensors, modules, optimizers, keep_groups=True)
    return meta
