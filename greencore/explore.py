"""Explore a model's training-step FLOPs and tensor importance before training, cached per choice.

`explore(ExploreSpec(...))` loads the model, samples `probe_batches` batches of exactly `seq_len` tokens, profiles
one training step on the first batch and scores every tensor on all of them. The result is cached in this process
(a few entries, least recently used dropped first), so asking for another rho only re-runs the selector:

    >>> ex = explore(ExploreSpec(model="tiny-gpt2"))
    >>> selection = ex.select(0.5)
    >>> ex.measured_ratio(selection)["ratio"]   # FlopCounterMode on the cached batch

With `config_only=True` the model is built from its config on the meta device (`greencore.meta`: any size, no
weights, no data): the costs are exact, the importance is structural (`STRUCTURAL_METRICS`), never a learned one.

The profile alone (no importance) is cached one level down by `profiled`, which the app also uses to draw a training
run's recorded selections with their real per-tensor FLOPs. Cached models are shared by every caller: everything that
runs them (profiling, importance, measuring) holds one process-wide lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Hashable, TypeVar

import numpy as np
import plotly.graph_objects as go
import torch

from .data import PROMPTS
from .flops import measure_training_flops
from .importance import IMPORTANCE_METRICS, STRUCTURAL_METRICS, tensor_importance
from .meta import load_config, meta_batch, meta_model
from .models import check_batch_shape, load_model
from .plots import budget_reach, tradeoff_curve
from .profile import TensorProfile, profile_model
from .select import Selection, select_tensors
from .tasks import get_task

__all__ = [
    "CACHE_SIZE", "ExploreSpec", "Exploration", "Profiled", "check_dataset", "explore", "profiled",
]

CACHE_SIZE = 4
"""Entries kept per cache level; each holds a model, so the bound is what limits memory."""

Progress = Callable[[float, str], None]
T = TypeVar("T")


@dataclass(frozen=True)
class ExploreSpec:
    """One choice to explore: model, data set, probe batch shape, importance metric, number of probe batches and the
    prompt the probes are written in (`TrainConfig.prompt`'s choices; "auto" is what a training run uses by default).

    `config_only` builds the model from its config on the meta device (`greencore.meta.load_config` names: a table
    architecture, a config.json, a built-in, a hub id) and profiles one batch of full rows, every position scored;
    the data set, prompt, probe batches and device then play no part. `metric` "auto" is taylor with weights and
    uniform without; a config-only spec takes only a structural metric.
    """

    model: str = "smollm2"
    dataset: str = ""  # "": the task's default data set (stdlib-tldr, or stdlib-topic for classification)
    batch_size: int = 4
    seq_len: int = 128
    metric: str = "auto"
    probe_batches: int = 2
    seed: int = 0
    device: str = "auto"
    prompt: str = "auto"
    config_only: bool = False
    task: str = "summarization"  # classification: the model under a new classification head, labelled batches

    def __post_init__(self) -> None:
        task = get_task(self.task)
        if self.metric == "auto":
            object.__setattr__(self, "metric", "uniform" if self.config_only else "taylor")
        if not self.model or not self.model.strip():
            raise ValueError("model is empty: give a built-in name, a hub id or a local path")
        object.__setattr__(self, "dataset", (self.dataset or "").strip() or task.default_dataset)
        if not self.config_only:
            task.check_dataset(self.dataset)
        if self.config_only and task.new_head:
            raise ValueError(f"config only profiles a language model; for {self.task}, load the model's weights "
                             "(untick config only)")
        for name in ("batch_size", "seq_len", "probe_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a whole number >= 1")
        if self.metric not in IMPORTANCE_METRICS:
            raise ValueError(f"metric={self.metric!r}: use one of {', '.join(IMPORTANCE_METRICS)}")
        if self.prompt not in PROMPTS:
            raise ValueError(f"prompt={self.prompt!r}: use one of {', '.join(PROMPTS)}")
        if self.config_only and self.metric not in STRUCTURAL_METRICS:
            raise ValueError(f"metric={self.metric!r} needs the model's weights; config only (no weights) takes a "
                             f"structural metric: {' or '.join(STRUCTURAL_METRICS)}")

    @property
    def profile_key(self) -> "ExploreSpec":
        """The part of the spec the profile depends on (everything but the metric; config only: the model and the
        batch shape)."""
        if self.config_only:
            return ExploreSpec(model=self.model, batch_size=self.batch_size, seq_len=self.seq_len, seed=self.seed,
                               config_only=True)
        return replace(self, metric="taylor")


@dataclass
class Profiled:
    """A loaded model with its probe batches and the profile of one training step on the first batch."""

    spec: ExploreSpec
    model: torch.nn.Module
    batches: list[dict[str, torch.Tensor]]
    profile: TensorProfile


@dataclass
class Exploration:
    """A profiled model with its tensor importance: select at any rho, measure a selection's real FLOPs."""

    spec: ExploreSpec
    profiled: Profiled
    importance: np.ndarray
    _tradeoff: go.Figure | None = field(default=None, repr=False)
    _full_flops: int | None = field(default=None, repr=False)

    @property
    def profile(self) -> TensorProfile:
        """The profile of one training step on the first probe batch."""
        return self.profiled.profile

    def select(self, rho: float) -> Selection:
        """The best tensors at `rho` (ValueError below `profile.min_training_rho`, with that value in the message)."""
        return select_tensors(self.profile, self.importance, rho)

    def tradeoff(self, rho: float | None = None) -> go.Figure:
        """`plots.tradeoff_curve` with `rho` marked (config only: `plots.budget_reach`, which needs no importance);
        its 40 selections are computed once per exploration."""
        if self._tradeoff is None:
            if self.spec.config_only:
                params = dict(self.profiled.model.named_parameters())
                self._tradeoff = budget_reach(self.profile, [params[n].numel() for n in self.profile.names])
            else:
                self._tradeoff = tradeoff_curve(self.profile, self.importance)
        fig = go.Figure(self._tradeoff)
        if rho is not None:
            fig.add_vline(x=rho, line_dash="dash", annotation_text=f"rho = {rho:.2f}")
        return fig

    def measured_ratio(self, selection: Selection) -> dict[str, float]:
        """FLOPs of one training step of `selection` and of full fine-tuning, measured on the first probe batch."""
        model, batch = self.profiled.model, self.profiled.batches[0]
        with _compute_lock:
            if self._full_flops is None:
                self._full_flops = measure_training_flops(model, batch, self.profile.names)["total"]
            measured = measure_training_flops(model, batch, selection.trainable, names=self.profile.names)["total"]
        return {"measured": float(measured), "full": float(self._full_flops), "ratio": measured / self._full_flops}


_profiles: OrderedDict[Hashable, Profiled] = OrderedDict()
_explorations: OrderedDict[Hashable, Exploration] = OrderedDict()
_store_lock = threading.Lock()  # guards the two caches' dicts (held for microseconds)
_compute_lock = threading.RLock()  # held while a cached model runs


def profiled(spec: ExploreSpec, progress: Progress | None = None) -> Profiled:
    """The model of `spec` loaded in training mode, its probe batches and its profile (cached)."""
    report = progress or (lambda fraction, message: None)

    def build() -> Profiled:
        if spec.config_only:
            report(0.0, f"building {spec.model} from its config on the meta device (no weights)")
            model = meta_model(load_config(spec.model))
            check_batch_shape(model, spec.batch_size, spec.seq_len)
            batch = meta_batch(model, spec.batch_size, spec.seq_len, seed=spec.seed)
            report(0.3, "profiling one training step")
            return Profiled(spec.profile_key, model, [batch], profile_model(model, batch))
        task = get_task(spec.task)
        report(0.0, f"loading {spec.model} (a first load converts or downloads it)")
        model, tokenizer = load_model(spec.model, seed=spec.seed, device=spec.device,
                                      num_labels=task.num_labels_of(spec.dataset))
        model.train()
        check_batch_shape(model, spec.batch_size, spec.seq_len)
        report(0.2, f"sampling {spec.probe_batches} batch(es) of {spec.batch_size} x {spec.seq_len} tokens")
        batches = task.sample(tokenizer, spec.dataset, is_encoder_decoder=bool(model.config.is_encoder_decoder),
                              batch_size=spec.batch_size, seq_len=spec.seq_len, count=spec.probe_batches,
                              seed=spec.seed, prompt=spec.prompt)
        device = next(model.parameters()).device
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        report(0.3, "profiling one training step")
        return Profiled(spec.profile_key, model, batches, profile_model(model, batches[0]))

    return _cached(_profiles, spec.profile_key, build)


def explore(spec: ExploreSpec, progress: Progress | None = None) -> Exploration:
    """Profile and importance for `spec`, computed once per spec and cached; `progress(fraction, message)` is
    called as the steps of a computation start."""
    report = progress or (lambda fraction, message: None)

    def build() -> Exploration:
        base = profiled(spec, progress)
        on = "" if spec.config_only else f" on {spec.probe_batches} probe batch(es)"
        report(0.6, f"scoring importance ({spec.metric}){on}")
        importance = tensor_importance(base.model, base.batches, metric=spec.metric, profile=base.profile,
                                       seed=spec.seed)
        report(1.0, "done")
        return Exploration(spec, base, importance)

    return _cached(_explorations, spec, build)


def check_dataset(name: str, task: str = "summarization") -> None:
    """Load a data set of `task` once; ValueError naming it when it cannot be read (missing, not UTF-8, malformed,
    another task's)."""
    get_task(task).load(name)


def _cached(store: OrderedDict[Hashable, Any], key: Hashable, build: Callable[[], T]) -> T:
    """store[key], built under the compute lock on a miss; a hit never waits for another caller's computation."""
    with _store_lock:
        if key in store:
            store.move_to_end(key)
            return store[key]
    with _compute_lock:
        with _store_lock:
            if key in store:  # built by another caller while we waited
                return store[key]
        value = build()
        with _store_lock:
            store[key] = value
            while len(store) > CACHE_SIZE:
                store.popitem(last=False)
        return value
