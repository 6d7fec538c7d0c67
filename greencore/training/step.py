"""One training step and one re-selection, the same code for one process and for N data-parallel ranks.

In one process a batch's `share` is 1 and every collective returns its input; under DDP each rank runs its shard of
the global batch, its mean loss scaled by `share * world_size` (`share`: the shard's part of the batch's label
tokens), so DDP's average of the ranks' gradients is the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from ..flops import flop_counter, model_loss
from ..importance import GRADIENT_METRICS, gradient_scores, tensor_importance
from ..records import SelectionRow, TrainRow, checkpoints
from ..select import require_tensors, select_tensors
from ..trainable import parameters_by_name, set_trainable
from . import distributed
from .accounting import cost_key
from .setup import RunState, TrainingError
from .summary import write_summary

__all__ = ["reselect", "select_in_step", "train_step"]


def train_step(s: RunState, batch: dict, share: float, epoch: int, index: int, step: int,
               before_update: Callable[[], None] | None = None) -> TrainRow:
    """Forward, backward and update on this rank's shard of one global batch; record and return the step's row.
    `before_update` runs between the backward pass and the update (`select_in_step` chooses there)."""
    s.model.train()
    key = cost_key(s.model, batch)
    started = time.perf_counter()
    with s.account.measure_step(s.trainable, key) as phase:
        with phase("forward"), s.precision.autocast():
            loss = model_loss(s.replicas(), batch)
        with phase("backward"):
            s.precision.backward(loss * (share * s.dist.world_size))
    seconds = time.perf_counter() - started
    energy = s.energy.cut("training")
    s.account.add_full_equivalent(s.model, batch, key, s.candidates)
    s.energy.cut("accounting")  # measuring what full fine-tuning would spend is neither scheme's cost
    counters = s.account.counters
    started = time.perf_counter()
    global_loss, flops, flops_full, kwh, co2 = distributed.all_reduce_sum(
        [loss.item() * share, counters.flops_total, counters.flops_full, energy["kwh"], energy["co2_kg"]], s.dist)
    if not math.isfinite(global_loss):
        _fail(s, global_loss, epoch, step)
    if before_update is not None:
        before_update()
    lr, stepped = _update(s)
    counters.train_seconds += seconds + time.perf_counter() - started
    s.trainable_params = max(s.trainable_params, _count_params(s.model, s.trainable))
    row: TrainRow = {"type": "train", "step": step + 1, "epoch": epoch + (index + 1) / s.data.steps_per_epoch,
                     "loss": global_loss, "lr": lr, "flops": flops, "flops_full": flops_full,
                     "time": counters.seconds, "total_steps": s.data.total_steps,
                     "energy_kwh": kwh if s.energy.enabled else None, "co2_kg": co2 if s.energy.enabled else None,
                     "energy_method": s.energy.method, "skipped": not stepped}
    s.writer.append("metrics", row)
    return row


def reselect(s: RunState, epoch: int, step: int) -> SelectionRow:
    """Score every candidate on fresh probe batches, choose the best set under rho and train exactly it from now.

    Under DDP each rank probes its shard of the same global probe batches and the gradients are summed over the
    ranks (weighted by label tokens) before scoring (under FSDP2 FSDP reduces them and the shards' scores are
    summed); rank 0's selection is then broadcast, so every rank trains the
    same tensors by construction. With `importance_ema` the score is an exponential moving average over the
    selections' probes (a tensor trained for a while keeps part of the score its gradient had before it shrank).
    """
    c = s.config
    started = time.perf_counter()
    metric = s.scheme.importance_metric(c.metric)
    probes = s.data.probes(s.selection_index, c.probe_batches)
    with flop_counter() as counter, s.precision.autocast():
        probed = tensor_importance(s.model, [b for b, _ in probes], s.optimizer, metric, profile=s.profile,
                                   seed=c.seed + s.selection_index, weights=[w for _, w in probes],
                                   reduce=None if s.sharded else distributed.gradient_reduce(s.dist),
                                   rho=s.budget(step))
    return _choose(s, probed, metric, epoch, step, started, counter.get_total_flops())


def select_in_step(s: RunState, batch: dict, share: float, epoch: int, index: int,
                   step: int) -> tuple[SelectionRow, TrainRow]:
    """A re-selection scored by the step it precedes (`probe="step"`), with no probe passes: every tensor within the
    budget's reach requires grad for this step's backward, their gradients (under DDP already averaged over the
    ranks; under FSDP2 each rank's shard, whose scores are summed over the ranks) are scored, the selection is solved and applied, and the update moves the selected tensors only. What
    the selection costs is the part of this step's backward beyond what the selection alone would spend: inside the
    step's measured FLOPs, so the run's total is exact and its selection share shows the profiling pass only."""
    metric = s.scheme.importance_metric(s.config.metric)
    scored = s.profile.within_reach(s.budget(step))
    names = [n for n, keep in zip(s.profile.names, scored) if keep]
    set_trainable(s.model, names, s.optimizer, candidates=s.profile.names)
    s.trainable = names
    chosen: list[SelectionRow] = []

    def choose() -> None:
        started = time.perf_counter()
        params = parameters_by_name(s.model)
        scale = s.precision.grad_scale()
        probed = np.zeros(len(scored))
        probed[scored] = gradient_scores([params[n] for n in names],
                                         [None if params[n].grad is None else params[n].grad / scale for n in names],
                                         s.optimizer, metric)
        chosen.append(_choose(s, probed, metric, epoch, step, started, 0))

    row = train_step(s, batch, share, epoch, index, step, before_update=choose)
    return chosen[0], row


def _choose(s: RunState, probed: np.ndarray, metric: str, epoch: int, step: int, started: float,
            flops: float) -> SelectionRow:
    """Solve the selection from a probe's scores (averaged with the earlier ones under `importance_ema`), apply it
    and record its row; `flops` is what the probe passes cost (0 when the scores came from a step)."""
    c = s.config
    rho = s.budget(step)
    importance = probed
    if c.importance_ema and s.importance is not None:  # an importance that survives its own success
        importance = c.importance_ema * np.asarray(s.importance) + (1 - c.importance_ema) * np.asarray(probed)
    selection, importance = distributed.broadcast_object(
        (select_tensors(s.profile, importance, rho), importance), s.dist)
    s.importance = [float(x) for x in importance]
    require_tensors(selection, metric)
    scored = s.profile.within_reach(rho) if metric in GRADIENT_METRICS else np.ones(len(importance), bool)
    set_trainable(s.model, selection.trainable, s.optimizer, candidates=s.profile.names)
    s.trainable = selection.trainable
    seconds = time.perf_counter() - started
    s.account.counters.flops_selection += flops
    s.account.counters.selection_seconds += seconds
    overhead = distributed.all_gather_object(flops, s.dist)
    row: SelectionRow = {
        "type": "selection", "index": s.selection_index, "step": step, "epoch": epoch, "rho": rho,
        "metric": metric, "probe": c.probe, "profile": "profile.json", "names": s.profile.names,
        "mask": selection.mask.tolist(), "importance": s.importance,
        "probe_importance": [float(x) for x in probed],
        "scored": scored.tolist(),
        "predicted_ratio": selection.predicted_ratio,
        "objective": selection.objective, "trainable_tensors": len(selection.trainable),
        "flops_overhead": sum(overhead), "seconds": seconds}
    if s.dist.enabled:
        row["flops_overhead_per_rank"] = overhead
    s.writer.append("selections", row)
    s.selection_index += 1
    return row


def _update(s: RunState) -> tuple[float, bool]:
    """Clip, step the optimizer (fp16 skips a step with inf/NaN gradients) and the schedule, drop the gradients;
    returns the learning rate used and whether the optimizer stepped."""
    params = [p for p in s.optimizer.param_groups[0]["params"] if p.grad is not None]
    lr = s.scheduler.get_last_lr()[0]
    stepped = s.precision.step(s.optimizer, params, s.config.max_grad_norm)
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return lr, stepped


def _fail(s: RunState, loss: float, epoch: int, step: int) -> None:
    """Record the run as failed (every rank agrees) and raise, naming the last good checkpoint."""
    last = checkpoints(s.writer.root) if s.dist.is_main else []
    kept = distributed.broadcast_object(
        f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet", s.dist)
    write_summary(s, "failed", step, error=f"loss became {loss} at step {step + 1}")
    raise TrainingError(f"the loss became {loss} at step {step + 1} (epoch {epoch + 1}); {kept}. "
                        f"Lower the learning rate (now {s.config.lr}) and start again")


def _count_params(model: torch.nn.Module, names: list[str]) -> int:
    params = parameters_by_name(model)
    return sum(p.numel() for p in {id(params[n]): params[n] for n in names}.values())
