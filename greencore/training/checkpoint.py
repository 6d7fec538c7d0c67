"""Checkpoints of a run and the random-number state that makes resuming exact.

A checkpoint (`records.RunWriter.save_checkpoint`, written atomically) holds the weights, the optimizer moments of
the tensors that have them, and `state.json`: where the loop stood, the trainable set, the schedule, the FLOPs
account, the fp16 loss scale and every RNG. Under DDP rank 0 writes one checkpoint holding every rank's counters and
RNG, after checking that the ranks' weights are bit-identical. Under FSDP2 every rank writes its shards of the
weights and optimizer moments with `torch.distributed.checkpoint` (`records.SHARDS`, resumed from), and rank 0 adds
the full model gathered to its CPU as `model.safetensors` (the export every reader of a run uses), so the folder
needs a file system all ranks see. Resuming needs the same number of processes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..records import SHARDS, latest_checkpoint, load_checkpoint
from ..trainable import set_trainable, tied_aliases
from . import distributed

from .setup import TrainingError

if TYPE_CHECKING:
    from .setup import RunState

__all__ = ["Position", "restore", "save", "seed_everything"]


@dataclass(frozen=True)
class Position:
    """Where the loop stands: the epoch, the batch index within it, and optimizer steps taken so far."""

    epoch: int = 0
    index: int = 0
    step: int = 0


def save(s: "RunState", name: str, at: Position) -> dict:
    """Write checkpoint `name` of the run at `at` (a collective under DDP) and return its event."""
    tensors = {} if s.sharded else {key: value.detach().cpu() for key, value in _moments(s).items()}
    state = {"global_step": at.step, "epoch": at.epoch, "index": at.index, "trainable": s.trainable,
             "selection_index": s.selection_index, "importance": s.importance, "trainable_params": s.trainable_params,
             "scheduler": s.scheduler.state_dict(), "rng": _rng_state(), "energy": s.energy.state_dict(),
             "precision": s.precision.state_dict(), **s.account.state_dict()}
    if s.dist.enabled:  # every rank's counters and RNG go into rank 0's checkpoint
        own = {"counters": state["counters"], "rng": state["rng"], "measured": state["measured"],
               "energy": state["energy"]}
        state.update(world_size=s.dist.world_size, ranks=distributed.all_gather_object(own, s.dist))
    if s.sharded:
        return _save_sharded(s, name, at, state)
    if s.dist.enabled:  # replicas: the weights must be identical
        fingerprints = distributed.all_gather_object(distributed.weights_fingerprint(s.model), s.dist)
        if len(set(fingerprints)) > 1:
            raise TrainingError(f"the ranks' weights diverged by step {at.step} (fingerprints {fingerprints}); this "
                                "is a bug: report it with the command line")
        state["weights_fingerprint"] = fingerprints[0]
    path = distributed.on_main(
        lambda: s.writer.save_checkpoint(name, s.model.state_dict(), tensors, state, s.config.keep_checkpoints),
        s.dist)
    return {"type": "checkpoint", "step": at.step, "path": str(path)}


def _save_sharded(s: "RunState", name: str, at: Position, state: dict) -> dict:
    """A sharded run's checkpoint: every rank's shards into a staged folder, then rank 0's full export and state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(s.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for alias in tied_aliases(s.model):  # gathered copies no longer share memory: a tied weight is stored once
        full.pop(alias, None)
    moments = _moments(s)
    state["sharded"] = True
    state["optimizer_fields"] = {key: list(value.shape) for key, value in moments.items()}
    staged = distributed.on_main(lambda: s.writer.stage_checkpoint(name) if s.writer.enabled else None, s.dist)
    dcp.save({"model": get_model_state_dict(s.model), "optimizer": moments}, checkpoint_id=str(staged / SHARDS))
    path = distributed.on_main(
        lambda: s.writer.save_checkpoint(name, full, None, state, s.config.keep_checkpoints, staged=staged), s.dist)
    return {"type": "checkpoint", "step": at.step, "path": str(path)}


def _moments(s: "RunState") -> dict[str, torch.Tensor]:
    """The optimizer's state, `{parameter}::{field}` -> tensor (a sharded parameter's moments are DTensors)."""
    return {f"{pname}::{field}": torch.as_tensor(value) for pname, p in s.model.named_parameters()
            for field, value in s.optimizer.state.get(p, {}).items()}


def restore(s: "RunState", out: Path) -> tuple[Path, Position]:
    """Load the latest checkpoint of the run in `out` into `s`, drop records written after it, and return the
    checkpoint's path and position."""
    loaded: dict = {}
    latest = distributed.broadcast_object(latest_checkpoint(out) if s.dist.is_main else None, s.dist)

    def load() -> dict:
        state = json.loads((latest / "state.json").read_text())
        trained_on = state.get("world_size", 1)
        if trained_on != s.dist.world_size:
            raise ValueError(f"{latest} was written by a run on {trained_on} process(es); resume it on "
                             f"{trained_on} (now {s.dist.world_size}): exact resume needs every rank's state")
        if bool(state.get("sharded")) != s.sharded:
            raise ValueError(f"{latest} was written by a run with --strategy {'fsdp' if state.get('sharded') else 'ddp'}"
                             f"; resume it with that strategy (now {s.strategy})")
        if not s.sharded:
            loaded["tensors"], state = load_checkpoint(latest, s.model)
        return state

    state = distributed.on_main(load, s.dist)
    if s.dist.enabled:
        state = {**state, **state["ranks"][s.dist.rank]}
    params = dict(s.model.named_parameters())
    s.trainable = state["trainable"]
    set_trainable(s.model, s.trainable, s.optimizer, candidates=s.profile.names)
    if s.sharded:
        tensors = _load_sharded(s, latest / SHARDS, state["optimizer_fields"])
    else:
        tensors = distributed.broadcast_tensors(loaded.get("tensors"), s.dist)
        distributed.broadcast_module(s.model, s.dist)  # rank 0 read the weights
    for key, value in tensors.items():
        pname, field = key.split("::")
        s.optimizer.state[params[pname]][field] = value.to(params[pname].device)
    s.scheduler.load_state_dict(state["scheduler"])
    for group, lr in zip(s.optimizer.param_groups, s.scheduler.get_last_lr()):
        group["lr"] = lr  # the scheduler's state does not carry the learning rate it last set
    s.selection_index = state["selection_index"]
    s.importance = state.get("importance")  # absent in checkpoints written before importance_ema
    s.trainable_params = state["trainable_params"]
    s.account.load_state_dict(state)
    s.energy.load_state_dict(state.get("energy", {}))
    s.precision.load_state_dict(state.get("precision", {}))
    _set_rng_state(state["rng"])
    s.writer.truncate_after(state["global_step"])
    return latest, Position(state["epoch"], state["index"], state["global_step"])


def _load_sharded(s: "RunState", folder: Path, fields: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Every rank reads its shards of the weights (into the model) and of the optimizer moments (returned)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    params = dict(s.model.named_parameters())
    moments = {key: torch.zeros_like(params[key.split("::")[0]]) if shape else torch.zeros(())
               for key, shape in fields.items()}
    weights = get_model_state_dict(s.model)
    dcp.load({"model": weights, "optimizer": moments}, checkpoint_id=str(folder))
    set_model_state_dict(s.model, weights)
    return moments


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    state["numpy"] = [state["numpy"][0], state["numpy"][1].tolist(), *state["numpy"][2:]]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
