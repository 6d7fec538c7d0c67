"""Evaluation during a run: validation loss after each epoch, the task's final evaluation at the end.

Under DDP each rank scores (or generates for) a contiguous part of the split and the parts are combined, so the
numbers are those of one process. Under FSDP2 every forward pass is a collective that all ranks must enter with the
same count, so every rank evaluates the whole split in step (the same inputs, the same passes) and keeps its own
result. Energy is cut around each evaluation: what ran before it was training.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch

from ..data import scored_targets
from ..flops import rng_devices
from ..records import EvalRow
from . import distributed
from .setup import RunState

__all__ = ["final_evaluation", "validate"]


def validate(s: RunState, epoch: int, step: int) -> EvalRow:
    """Teacher-forced validation loss (token-weighted over the ranks), recorded and returned."""
    from ..evaluate import validation_loss  # imported when needed: rouge-score's nltk costs seconds per process

    started = time.perf_counter()
    s.energy.cut("training")
    with torch.random.fork_rng(devices=rng_devices(s.model.parameters())), s.precision.autocast():
        part = _part(s, s.data.val_rows)
        local = validation_loss(s.model, s.tokenizer, part, batch_size=s.config.batch_size) if part else 0.0
        tokens = sum(scored_targets(r, s.data.is_encoder_decoder) for r in part)
        energy = s.energy.cut("evaluation")
        total, count, kwh, co2 = distributed.all_reduce_sum([local * tokens, tokens, energy["kwh"], energy["co2_kg"]],
                                                            s.dist)
    _reshard(s)
    s.account.counters.eval_seconds += time.perf_counter() - started
    row: EvalRow = {"type": "eval", "split": "validation", "step": step, "epoch": epoch,
                    "loss": total / max(count, 1), **_energy(s, kwh, co2)}
    s.writer.append("metrics", row)
    return row


def _part(s: RunState, items: list) -> list:
    """What this rank evaluates: its contiguous part, or everything when the model is sharded (see above)."""
    return list(items) if s.sharded else distributed.chunk(items, s.dist)


def _reshard(s: RunState) -> None:
    """Free the gathered weights FSDP2 keeps after forward passes without a backward (the root's, by default)."""
    if s.sharded:
        s.model.reshard()


def _energy(s: RunState, kwh: float, co2: float) -> dict:
    """An evaluation row's energy fields: the run's evaluation energy and CO2 so far, over the ranks."""
    return {"energy_kwh": kwh, "co2_kg": co2} if s.energy.enabled else {"energy_kwh": None, "co2_kg": None}


def final_evaluation(s: RunState, step: int) -> Iterator[EvalRow]:
    """Predict the validation and test splits and score them as the task does (ROUGE of generated summaries, or a
    classifier's accuracy and macro-F1 beside the majority class's); yields one row per split and returns the
    scores for the summary (`validation_<metric>`, and the test split's as `<metric>`)."""
    c, task = s.config, s.config.task_spec
    scores: dict[str, float] = {}
    if not task.evaluates(c):
        return scores
    started = time.perf_counter()
    s.energy.cut("training")
    for split, data in s.data.eval_data.items():
        if len(data) == 0:
            continue
        inputs = _part(s, task.inputs(data))
        with s.precision.autocast():
            predictions = task.predict(s.model, s.tokenizer, inputs, c, s.data.prompt) if inputs else []
        if not s.sharded:
            predictions = [p for part in distributed.all_gather_object(predictions, s.dist) for p in part]
        result = task.score(predictions, data, s.data.train_split)
        scores.update({f"{split}_{k}": v for k, v in result.items()})
        if split == "test":
            scores.update(result)
        energy = s.energy.cut("evaluation")
        kwh, co2 = distributed.all_reduce_sum([energy["kwh"], energy["co2_kg"]], s.dist)
        row: EvalRow = {"type": "eval", "split": split, "step": step, **result, **_energy(s, kwh, co2),
                        "examples": task.examples(predictions, data)}
        s.writer.append("metrics", row)
        yield row
    _reshard(s)
    s.account.counters.eval_seconds += time.perf_counter() - started
    return scores
