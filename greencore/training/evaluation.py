"""Evaluation during a run: validation loss after each epoch, generation and ROUGE at the end.

Under DDP each rank scores (or generates for) a contiguous part of the split and the parts are combined, so the
numbers are those of one process. Energy is cut around each evaluation: what ran before it was training.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch

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
        part = distributed.chunk(s.data.val_rows, s.dist)
        local = validation_loss(s.model, s.tokenizer, part, batch_size=s.config.batch_size) if part else 0.0
        tokens = sum(distributed.label_tokens(r, s.data.is_encoder_decoder) for r in part)
        energy = s.energy.cut("evaluation")
        total, count, kwh, co2 = distributed.all_reduce_sum([local * tokens, tokens, energy["kwh"], energy["co2_kg"]],
                                                            s.dist)
    s.account.counters.eval_seconds += time.perf_counter() - started
    row: EvalRow = {"type": "eval", "split": "validation", "step": step, "epoch": epoch,
                    "loss": total / max(count, 1), **_energy(s, kwh, co2)}
    s.writer.append("metrics", row)
    return row


def _energy(s: RunState, kwh: float, co2: float) -> dict:
    """An evaluation row's energy fields: the run's evaluation energy and CO2 so far, over the ranks."""
    return {"energy_kwh": kwh, "co2_kg": co2} if s.energy.enabled else {"energy_kwh": None, "co2_kg": None}


def final_evaluation(s: RunState, step: int) -> Iterator[EvalRow]:
    """Generate summaries of the validation and test splits and score them; yields one row per split and returns
    the scores for the summary (`validation_rouge1`, ..., and the test split's as `rouge1`, ...)."""
    from ..evaluate import generate_summaries, rouge

    c = s.config
    scores: dict[str, float] = {}
    if not c.eval_rouge:
        return scores
    started = time.perf_counter()
    s.energy.cut("training")
    for split, data in s.data.eval_data.items():
        if len(data) == 0:
            continue
        sources = distributed.chunk(list(data["source"]), s.dist)
        with s.precision.autocast():
            predictions = generate_summaries(s.model, s.tokenizer, sources, max_source_tokens=c.max_source_tokens,
                                             max_new_tokens=c.max_target_tokens, num_beams=c.num_beams,
                                             prompt=s.data.prompt) if sources else []
        predictions = [p for part in distributed.all_gather_object(predictions, s.dist) for p in part]
        result = rouge(predictions, list(data["target"]))
        scores.update({f"{split}_{k}": v for k, v in result.items()})
        if split == "test":
            scores.update(result)
        energy = s.energy.cut("evaluation")
        kwh, co2 = distributed.all_reduce_sum([energy["kwh"], energy["co2_kg"]], s.dist)
        row: EvalRow = {"type": "eval", "split": split, "step": step, **result, **_energy(s, kwh, co2),
                        "examples": [{"prediction": p, "reference": r}
                                     for p, r in zip(predictions[:5], list(data["target"])[:5])]}
        s.writer.append("metrics", row)
        yield row
    s.account.counters.eval_seconds += time.perf_counter() - started
    return scores
