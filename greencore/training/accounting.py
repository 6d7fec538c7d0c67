"""Honest FLOPs accounting of a run: what every step spent, measured, and what full fine-tuning would have spent.

The first step of each distinct (trainable set, batch cost key) runs under `FlopCounterMode` and later steps with the
same key reuse that count; what full fine-tuning would have spent on the same batch is measured once per cost key
with every candidate tensor trainable (on a peft model, with its adapters disabled: the base model). Selection work
(the profiling forward pass, probe passes) is counted separately, so the ratio to full fine-tuning can be shown with
and without it. Counts are per process; the summary sums them over the ranks.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch

from ..flops import flop_counter, measure_training_flops, scored_positions
from ..meta import twin_batch

__all__ = ["Counters", "FlopsAccount", "cost_key"]


def cost_key(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple:
    """What a step's FLOPs depend on besides the trainable set: the batch's tensor shapes and scored positions."""
    shapes = tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()))
    return shapes + (("scored_positions", (scored_positions(model, batch),)),)


def _key_from_json(shape: list) -> tuple:
    """A cost key read back from JSON: ((name, (dims...)), ...)."""
    return tuple((name, tuple(dims)) for name, dims in shape)


@dataclass
class Counters:
    """Running totals of one process (FLOPs and seconds)."""

    flops_training: float = 0.0
    flops_full: float = 0.0
    flops_selection: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    selection_seconds: float = 0.0
    ddp_wraps: int = 0
    ddp_wrap_seconds: float = 0.0

    @property
    def flops_total(self) -> float:
        """What the run spent: training steps plus selection work."""
        return self.flops_training + self.flops_selection

    @property
    def seconds(self) -> float:
        """Training time so far: steps plus selections (evaluation not included)."""
        return self.train_seconds + self.selection_seconds


@dataclass
class FlopsAccount:
    """Measured FLOPs per (trainable set, cost key) and per cost key for full fine-tuning, and the run's counters.

    With `predict` set (the profile's step FLOPs for a trainable set) and `profile_key` (the cost key of the batch the
    profile traced), every measured step of that key is also compared with its prediction: `prediction_miss` says
    by how much the cost model missed what ran (0 when exact; activation checkpointing's recomputation shows here).
    A full fine-tuning step is measured on the model itself, or on `twin` when the model is sharded.
    """

    counters: Counters = field(default_factory=Counters)
    step: dict[tuple, tuple[int, int]] = field(default_factory=dict)  # (trainable, key) -> (forward, backward)
    full: dict[tuple, int] = field(default_factory=dict)  # key -> FLOPs of a full fine-tuning step
    predicted: dict[tuple, float] = field(default_factory=dict)  # (trainable, profile_key) -> predicted step FLOPs
    profile_key: tuple | None = None
    predict: Callable[[list[str]], float | None] | None = None
    twin: torch.nn.Module | None = None  # under FSDP2: the model's `meta.meta_twin`, where full steps are measured

    @property
    def prediction_miss(self) -> float | None:
        """(measured - predicted) / predicted of the measured step whose prediction missed most, or None if no
        measured step had the profiled batch's shape."""
        misses = [(sum(self.step[index]) - predicted) / predicted for index, predicted in self.predicted.items()
                  if index in self.step and predicted]
        return max(misses, key=abs) if misses else None

    @contextlib.contextmanager
    def measure_step(self, trainable: list[str], key: tuple) -> Iterator[Callable[[str], Any]]:
        """Around one training step: yields `phase(name)`, a context manager for its "forward" and "backward",
        counted with FlopCounterMode the first time this (trainable set, key) is seen; then adds the step's FLOPs."""
        index = (tuple(trainable), key)
        measured: dict[str, int] = {}

        @contextlib.contextmanager
        def phase(name: str) -> Iterator[None]:
            if index in self.step:
                yield
                return
            with flop_counter() as counter:
                yield
            measured[name] = counter.get_total_flops()

        yield phase
        if index not in self.step:
            self.step[index] = (measured["forward"], measured["backward"])
            if key == self.profile_key and self.predict is not None:
                predicted = self.predict(trainable)
                if predicted is not None:
                    self.predicted[index] = predicted
        self.counters.flops_training += sum(self.step[index])

    def add_full_equivalent(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], key: tuple,
                            candidates: list[str]) -> None:
        """Add what a full fine-tuning step on `batch` costs, measured once per cost key."""
        if key not in self.full:
            if self.twin is not None:  # a sharded model's passes are collectives: measure on its weightless twin
                self.full[key] = measure_training_flops(self.twin, twin_batch(batch), candidates)["total"]
            else:
                with _adapters_disabled(model):
                    self.full[key] = measure_training_flops(model, batch, candidates)["total"]
        self.counters.flops_full += self.full[key]

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: a resumed run must not re-measure (a step under FlopCounterMode computes gradients that
        differ from an unmeasured one in the last bits)."""
        return {"counters": asdict(self.counters),
                "measured": {"step": [[list(names), key, list(counts)] for (names, key), counts in self.step.items()],
                             "full": [[key, total] for key, total in self.full.items()],
                             "predicted": [[list(names), key, total]
                                           for (names, key), total in self.predicted.items()]}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counters = Counters(**state["counters"])
        measured = state.get("measured", {})
        self.step = {(tuple(names), _key_from_json(key)): tuple(counts)
                     for names, key, counts in measured.get("step", [])}
        self.full = {_key_from_json(key): total for key, total in measured.get("full", [])}
        self.predicted = {(tuple(names), _key_from_json(key)): total
                          for names, key, total in measured.get("predicted", [])}


class _adapters_disabled:
    """Inside, a peft model computes as its base model (to measure what full fine-tuning would cost)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inner = model.disable_adapter() if hasattr(model, "disable_adapter") else None

    def __enter__(self):
        return self.inner.__enter__() if self.inner is not None else None

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc) if self.inner is not None else False
