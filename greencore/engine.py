"""The training engine: one harness for GreenTrainer and every baseline, with honest FLOPs accounting.

Every scheme gets the same data, optimizer (AdamW over all candidate tensors; frozen ones simply get no gradient),
linear schedule and evaluation. FLOPs are measured, not estimated: the first step of each distinct (trainable set,
batch shape) runs under `FlopCounterMode` and later steps with the same key reuse that count; what full fine-tuning
would have spent on the same batches is measured once per batch shape. GreenTrainer's probe passes and the profiling
pass are added to its total.

Use it as `train(config, out)`, or iterate `Run(config, out).events()` to follow a run as it happens (the app and
the notebooks do), and call `Run.stop()` from another thread to end it cleanly with a checkpoint.

Under `torchrun` / `accelerate launch` (WORLD_SIZE > 1) every process runs the same `train(config, out)` and the run
is data-parallel (see `distributed`): `batch_size` stays the global batch, split across the ranks; every rank trains
the same tensors (importance from all ranks' probe shards, selection broadcast from rank 0, DDP re-wrapped when the
trainable set changes); rank 0 alone writes the run directory; FLOPs are counted per rank and summed. Every rank's
`train` returns the same summary.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import math
import random
import threading
import time
import weakref
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from . import distributed
from .data import batches, collate, encode_examples, load_summarization, pad_batch
from .flops import flop_counter, measure_training_flops, model_loss, rng_devices, scored_positions
from .importance import IMPORTANCE_METRICS, tensor_importance
from .models import load_model
from .profile import profile_model
from .records import RunWriter, checkpoints, load_checkpoint, read_jsonl
from .schemes import SchemeSpec, parse_scheme, static_trainable, wrap_peft
from .select import select_tensors
from .trainable import set_trainable

__all__ = ["Run", "TrainConfig", "TrainingError", "train"]

PAD_MULTIPLE = 16  # batches are padded to a multiple of this, so few distinct shapes need measuring
PROFILE_CANDIDATES = 256  # batches of the first epoch among which the profiling batch's shape is chosen


class TrainingError(ValueError):
    """A run could not go on (for example its loss became NaN); the message says what to change."""


@dataclass
class TrainConfig:
    """Everything that defines a run. The defaults are the offline default: `minilm` on `stdlib-tldr`."""

    model: str = "minilm"
    dataset: str = "stdlib-tldr"
    scheme: str = "green"
    rho: float | None = 0.5
    interval: int = 1
    interval_unit: str = "epoch"
    probe_batches: int = 2
    metric: str = "taylor"
    k: int = 2
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    prefix_tokens: int = 20
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_source_tokens: int = 128
    max_target_tokens: int = 32
    max_train_examples: int | None = None
    max_eval_examples: int | None = 100
    num_beams: int = 2
    eval_rouge: bool = True
    seed: int = 0
    device: str = "auto"
    source_field: str | None = None
    target_field: str | None = None
    keep_checkpoints: int = 2
    label: str | None = None

    def __post_init__(self) -> None:
        self.spec  # validates the scheme and its parameter
        checks = [
            (self.interval >= 1, f"interval={self.interval} must be >= 1"),
            (self.interval_unit in ("epoch", "step"), f"interval_unit={self.interval_unit!r}: use 'epoch' or 'step'"),
            (self.probe_batches >= 1, f"probe_batches={self.probe_batches} must be >= 1"),
            (self.metric in IMPORTANCE_METRICS, f"metric={self.metric!r}: use one of {', '.join(IMPORTANCE_METRICS)}"),
            (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps={self.max_steps} must be >= 1"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr={self.lr} must be a positive number"),
            (self.num_beams >= 1, f"num_beams={self.num_beams} must be >= 1"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints={self.keep_checkpoints} must be >= 1"),
            (self.max_train_examples is None or self.max_train_examples >= 1,
             f"max_train_examples={self.max_train_examples} must be >= 1"),
            (self.max_eval_examples is None or self.max_eval_examples >= 1,
             f"max_eval_examples={self.max_eval_examples} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def spec(self) -> SchemeSpec:
        return parse_scheme(self.scheme, rho=self.rho, k=self.k)

    @property
    def name(self) -> str:
        return self.label or self.spec.label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def train(config: TrainConfig, out: str | Path, *, overwrite: bool = False) -> dict:
    """Run to the end and return the summary (also written to `out/summary.json`)."""
    run = Run(config, out, overwrite=overwrite)
    for _ in run.events():
        pass
    return run.summary


class Run:
    """One training run writing to its directory; iterate `events()` to drive it.

    `Run.resume(out)` continues an interrupted run from its last checkpoint; under the same seed the result is
    the same as that of an uninterrupted run.
    """

    def __init__(self, config: TrainConfig, out: str | Path, *, overwrite: bool = False, _resume: bool = False):
        self.config = config
        self.out = Path(out)
        self.summary: dict = {}
        self.status = "created"
        self._stop = threading.Event()
        self._stop_reason = "stopped"
        self._resume = _resume
        self._trainer = lambda: None  # a weak reference to the running trainer, once events() has started
        self.dist = distributed.setup()
        if not _resume:
            distributed.on_main(lambda: _claim_directory(self.out, config, overwrite), self.dist)

    @classmethod
    def resume(cls, out: str | Path) -> "Run":
        """A run that continues the interrupted run in `out` from its latest checkpoint."""
        out = Path(out)

        def read() -> dict:
            record = out / "config.json"
            if not record.exists():
                raise ValueError(f"cannot resume {out}: it holds no run (no config.json)")
            if not checkpoints(out):
                raise ValueError(f"cannot resume {out}: it has no checkpoint yet; start it again with --overwrite")
            import json

            return json.loads(record.read_text())

        return cls(TrainConfig.from_dict(distributed.on_main(read, distributed.setup())), out, _resume=True)

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to stop after the current step; it writes a checkpoint and a summary marked `reason`
        ("stopped", or "interrupted" for Ctrl-C). Safe to call from another thread or a signal handler."""
        self._stop_reason = reason
        self._stop.set()

    def events(self) -> Iterator[dict]:
        """Train, yielding each event (train step, eval, selection, checkpoint, done) as it is recorded."""
        self.status = "running"
        try:
            yield from _Trainer(self).run()
        except BaseException:
            if self.status == "running":
                self.status = "failed"
            raise


def _claim_directory(out: Path, config: TrainConfig, overwrite: bool) -> None:
    existing = out / "config.json"
    if existing.exists() and not overwrite:
        raise ValueError(f"{out} already holds a run; pass --overwrite to replace it, --resume {out} to continue it, "
                         "or choose another --out")
    if overwrite and out.exists():
        import shutil

        if existing.exists() or not any(out.iterdir()):
            shutil.rmtree(out)
        else:
            raise ValueError(f"{out} exists and is not a greencore run: refusing to delete it; choose another --out")


class _Trainer:
    """The state of one run while it trains (kept out of `Run` so `Run` stays a small handle)."""

    def __init__(self, handle: Run) -> None:
        self.handle = handle
        handle._trainer = weakref.ref(self)  # for tests and debugging; does not keep a finished run's model alive
        self.config = config = handle.config
        self.spec = config.spec
        self.dist = handle.dist
        self.writer = RunWriter(handle.out) if self.dist.is_main else _NoRecords(handle.out)
        self.device = distributed.resolve_device(config.device, self.dist)
        _seed_everything(config.seed)
        self.model, self.tokenizer = load_model(config.model, seed=config.seed, device=self.device)
        self.is_enc_dec = bool(self.model.config.is_encoder_decoder)
        self._load_data()
        self.counters = {"flops_training": 0.0, "flops_full": 0.0, "flops_selection": 0.0,
                         "train_seconds": 0.0, "eval_seconds": 0.0, "selection_seconds": 0.0}
        self.step_flops: dict[tuple, tuple[int, int]] = {}
        self.full_flops: dict[tuple, int] = {}
        self.selection_index = 0
        self.trainable_params = 0
        self._ddp: torch.nn.Module | None = None  # the DDP wrapper for the current trainable set (distributed only)
        self._ddp_key: frozenset[str] | None = None
        if self.dist.enabled:
            self.counters.update({"ddp_wraps": 0, "ddp_wrap_seconds": 0.0})
        self._prepare_model()

    # ------------------------------------------------------------------------------------------------- set-up

    def _load_data(self) -> None:
        c = self.config
        limits = {"train": c.max_train_examples, "validation": c.max_eval_examples, "test": c.max_eval_examples}
        data = load_summarization(c.dataset, source_field=c.source_field, target_field=c.target_field,
                                  max_examples={k: v for k, v in limits.items() if v is not None})
        encode = dict(is_encoder_decoder=self.is_enc_dec, max_source_tokens=c.max_source_tokens,
                      max_target_tokens=c.max_target_tokens)
        self.train_rows, self.truncated = encode_examples(self.tokenizer, data["train"], **encode)
        self.val_rows, _ = encode_examples(self.tokenizer, data["validation"], **encode)
        if len(self.train_rows) < c.batch_size:
            raise ValueError(f"the training split has {len(self.train_rows)} usable examples, fewer than one batch "
                             f"of {c.batch_size}: use more data or a smaller --batch-size")
        if not self.val_rows:
            raise ValueError("the validation split is empty after encoding: use a data set with more examples")
        if c.batch_size < self.dist.world_size:
            raise ValueError(f"batch_size={c.batch_size} is the global batch, split across the "
                             f"{self.dist.world_size} processes: use a batch size of at least {self.dist.world_size}")
        self.eval_data = {split: data[split] for split in ("validation", "test")}
        self.steps_per_epoch = len(self.train_rows) // c.batch_size
        total = self.steps_per_epoch * c.epochs
        self.total_steps = min(total, c.max_steps) if c.max_steps else total

    def _prepare_model(self) -> None:
        c = self.config
        self.model.train()
        probe = self._to_device(self._profiling_batch())
        base_profile = profile_model(self.model, probe)
        self.full_names = list(base_profile.names)
        if self.spec.name in ("lora", "prefix"):
            self.model = wrap_peft(self.model, self.spec, base_profile, lora_r=c.lora_r, lora_alpha=c.lora_alpha,
                                   lora_dropout=c.lora_dropout, prefix_tokens=c.prefix_tokens)
            self.full_names = [n for n, p in self.model.named_parameters() if not p.requires_grad]
            try:
                self.profile = profile_model(self.model, probe)
            except Exception as err:
                raise ValueError(f"{self.spec.name} does not run on {c.model}: {err}") from err
        else:
            self.profile = base_profile
        if self.spec.name in ("green", "random"):
            self.counters["flops_selection"] += self.profile.t_fp  # the profiling forward pass is GreenTrainer's cost
            if self.spec.rho < self.profile.min_rho:
                raise ValueError(f"rho={self.spec.rho} is below the feasible minimum {self.profile.min_rho:.3f} for "
                                 f"{c.model} (the forward pass alone costs that much); choose rho >= "
                                 f"{math.ceil(self.profile.min_rho * 1000) / 1000:.3f}")
            self.trainable = list(self.profile.names)
        else:
            self.trainable = static_trainable(self.spec, self.profile)
        params = dict(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW([params[n] for n in self.profile.names], lr=c.lr,
                                           weight_decay=c.weight_decay)
        self.scheduler = _linear_schedule(self.optimizer, self.total_steps)
        set_trainable(self.model, self.trainable, self.optimizer, candidates=self.profile.names)
        distributed.broadcast_module(self.model, self.dist)  # every rank starts from rank 0's weights

    def _profiling_batch(self) -> dict:
        """The batch the profile is made on: one of the first epoch's, of the cost key most of its batches have.

        A selection's cost ratio depends on the batch's shape (on an encoder-decoder, on the summary's length), so a
        budget set on the commonest shape holds best over the epoch. Collating batches costs no model FLOPs; the
        first PROFILE_CANDIDATES batches are looked at.
        """
        c = self.config
        order = batches(self.tokenizer, self.train_rows, batch_size=c.batch_size, shuffle=True,
                        seed=self._epoch_seed(0), drop_last=True)
        counts: collections.Counter = collections.Counter()
        first_of_key = {}
        for batch in itertools.islice(order, PROFILE_CANDIDATES):
            batch = self._bucket(batch)
            key = _cost_key(self.model, batch)
            counts[key] += 1
            first_of_key.setdefault(key, batch)
        return first_of_key[counts.most_common(1)[0][0]]

    def _epoch_seed(self, epoch: int) -> int:
        """The seed of an epoch's batch order (and its shards under DDP)."""
        return self.config.seed * 1_000_003 + epoch

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _bucket(self, batch: dict) -> dict:
        """Pad a batch's sequence lengths up to a multiple of PAD_MULTIPLE (fewer distinct shapes to measure)."""
        return pad_batch(self.tokenizer, batch, PAD_MULTIPLE)

    # ------------------------------------------------------------------------------------------------- the loop

    def run(self) -> Iterator[dict]:
        c = self.config
        start_epoch, skip, step = 0, 0, 0
        if self.handle._resume:
            start_epoch, skip, step = self._restore()
        else:
            self.writer.write_config(c.to_dict())
        self.started = time.time()
        self.memory = _PeakMemory(self.device)
        with self.memory:
            for epoch in range(start_epoch, c.epochs):
                seed = self._epoch_seed(epoch)
                if self.dist.enabled:
                    order = self._sharded(distributed.batch_indices(len(self.train_rows), c.batch_size, seed=seed))
                else:
                    order = batches(self.tokenizer, self.train_rows, batch_size=c.batch_size, shuffle=True,
                                    seed=seed, drop_last=True)
                for index, batch in enumerate(order):
                    if index < skip:
                        continue
                    if self._selection_due(epoch, index, step):
                        yield self._select(epoch, step)
                    if self.dist.enabled:
                        shard, share = batch
                        yield self._dist_step(self._to_device(self._bucket(shard)), share, epoch, index, step)
                    else:
                        yield self._step(self._to_device(self._bucket(batch)), epoch, index, step)
                    step += 1
                    if self._stop_requested() or step >= self.total_steps:
                        break
                skip = 0
                finished_epoch = index + 1 >= self.steps_per_epoch
                if self._stop_requested() and not finished_epoch:
                    yield self._checkpoint(f"step-{step}", epoch, index + 1, step)
                    yield self._finish(self.handle._stop_reason, step)
                    return
                yield self._evaluate(epoch + 1, step)
                yield self._checkpoint(f"epoch-{epoch + 1}", epoch + 1, 0, step)
                if self._stop_requested():
                    yield self._finish(self.handle._stop_reason, step)
                    return
                if step >= self.total_steps:
                    break
        yield from self._final(step)

    def _stop_requested(self) -> bool:
        """Whether to stop; under DDP a collective, true on every rank once any rank was asked to stop."""
        if not self.dist.enabled:
            return self.handle._stop.is_set()
        stop = distributed.any_rank(self.handle._stop.is_set(), self.dist)
        if stop:  # every rank takes the reason of the lowest rank that was asked to stop
            asked = self.handle._stop_reason if self.handle._stop.is_set() else None
            reasons = [r for r in distributed.all_gather_object(asked, self.dist) if r is not None]
            self.handle._stop_reason = reasons[0]
            self.handle._stop.set()
        return stop

    def _sharded(self, groups: list[list[int]]) -> Iterator[tuple[dict, float]]:
        """For each global batch (row indices): this rank's shard, collated, and its share of the batch's label
        tokens (the weight of its loss in the global batch's mean)."""
        rows, enc_dec = self.train_rows, self.is_enc_dec
        for group in groups:
            mine = distributed.shard(group, self.dist)
            total = sum(distributed.label_tokens(rows[i], enc_dec) for i in group)
            local = sum(distributed.label_tokens(rows[i], enc_dec) for i in mine)
            yield collate(self.tokenizer, [rows[i] for i in mine]), local / max(total, 1)

    def _selection_due(self, epoch: int, index: int, step: int) -> bool:
        if self.spec.name not in ("green", "random"):
            return False
        if self.config.interval_unit == "step":
            return step % self.config.interval == 0
        return index == 0 and epoch % self.config.interval == 0

    def _select(self, epoch: int, step: int) -> dict:
        c = self.config
        started = time.perf_counter()
        seed = c.seed * 7_919 + self.selection_index + 1
        metric = "random" if self.spec.name == "random" else c.metric
        if self.dist.enabled:
            # each rank probes its shard of the same global probe batches; their gradients are summed over the
            # ranks, weighted by label tokens, so the scores are those of the global batches
            groups = distributed.batch_indices(len(self.train_rows), c.batch_size, seed=seed)[:c.probe_batches]
            shards = list(self._sharded(groups))
            probes = [self._to_device(self._bucket(b)) for b, _ in shards]
            with flop_counter() as counter:
                importance = distributed.tensor_importance(
                    self.model, probes, self.optimizer, metric, profile=self.profile,
                    seed=c.seed + self.selection_index, weights=[share for _, share in shards], info=self.dist)
            # one selection for all: rank 0's (the ranks computed the same, up to floating-point rounding)
            selection, importance = distributed.broadcast_object(
                (select_tensors(self.profile, importance, self.spec.rho), importance), self.dist)
        else:
            order = batches(self.tokenizer, self.train_rows, batch_size=c.batch_size, shuffle=True, seed=seed,
                            drop_last=True)
            probes = [self._to_device(self._bucket(b)) for _, b in zip(range(c.probe_batches), order)]
            with flop_counter() as counter:
                importance = tensor_importance(self.model, probes, self.optimizer, metric, profile=self.profile,
                                               seed=c.seed + self.selection_index)
            selection = select_tensors(self.profile, importance, self.spec.rho)
        set_trainable(self.model, selection.trainable, self.optimizer, candidates=self.profile.names)
        self.trainable = selection.trainable
        seconds = time.perf_counter() - started
        self.counters["flops_selection"] += counter.get_total_flops()
        self.counters["selection_seconds"] += seconds
        overhead = distributed.all_gather_object(counter.get_total_flops(), self.dist)
        row = {"type": "selection", "index": self.selection_index, "step": step, "epoch": epoch, "rho": self.spec.rho,
               "metric": metric, "names": self.profile.names, "mask": selection.mask.tolist(),
               "importance": [float(x) for x in importance], "predicted_ratio": selection.predicted_ratio,
               "objective": selection.objective, "trainable_tensors": len(selection.trainable),
               "flops_overhead": sum(overhead), "seconds": seconds}
        if self.dist.enabled:
            row["flops_overhead_per_rank"] = overhead
        self.writer.append("selections", row)
        self.selection_index += 1
        return row

    def _step(self, batch: dict, epoch: int, index: int, step: int) -> dict:
        shape = _cost_key(self.model, batch)
        key = (tuple(self.trainable), shape)
        self.model.train()
        started = time.perf_counter()
        if key in self.step_flops:
            loss = self._forward(batch, step, epoch)
            _backward(loss)
        else:
            with flop_counter() as fwd:
                loss = self._forward(batch, step, epoch)
            with flop_counter() as bwd:
                _backward(loss)
            self.step_flops[key] = (fwd.get_total_flops(), bwd.get_total_flops())
        lr = self._update()
        self.counters["train_seconds"] += time.perf_counter() - started
        if shape not in self.full_flops:
            with _adapters_disabled(self.model):
                self.full_flops[shape] = measure_training_flops(self.model, batch, self.full_names)["total"]
        self.counters["flops_training"] += sum(self.step_flops[key])
        self.counters["flops_full"] += self.full_flops[shape]
        self.trainable_params = max(self.trainable_params, _count_params(self.model, self.trainable))
        row = {"type": "train", "step": step + 1, "epoch": epoch + (index + 1) / self.steps_per_epoch,
               "loss": loss.item(), "lr": lr, "flops": self._flops_total(), "flops_full": self.counters["flops_full"],
               "time": self.counters["train_seconds"] + self.counters["selection_seconds"],
               "total_steps": self.total_steps}
        self.writer.append("metrics", row)
        return row

    def _update(self) -> float:
        """Clip, step the optimizer and the schedule, drop the gradients; returns the learning rate used."""
        params = [p for p in self.optimizer.param_groups[0]["params"] if p.grad is not None]
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def _dist_step(self, shard: dict, share: float, epoch: int, index: int, step: int) -> dict:
        """One step of a distributed run on this rank's shard of the global batch (see `distributed`).

        The local mean loss is scaled by `share * world_size` (`share`: this shard's part of the global batch's label
        tokens), so DDP's average of the ranks' gradients is the gradient of the global batch's mean loss. One small
        all-reduce then gives every rank the global loss and FLOPs; a non-finite loss stops every rank before the
        optimizer step.
        """
        c = self.config
        shape = _cost_key(self.model, shard)
        key = (tuple(self.trainable), shape)
        self.model.train()
        module = self._wrapped()
        measure = key not in self.step_flops
        started = time.perf_counter()
        with flop_counter() if measure else contextlib.nullcontext() as fwd:
            loss = model_loss(module, shard)
        with flop_counter() if measure else contextlib.nullcontext() as bwd:
            _backward(loss * (share * self.dist.world_size))
        if measure:
            self.step_flops[key] = (fwd.get_total_flops(), bwd.get_total_flops())
        seconds = time.perf_counter() - started
        if shape not in self.full_flops:
            with _adapters_disabled(self.model):
                self.full_flops[shape] = measure_training_flops(self.model, shard, self.full_names)["total"]
        self.counters["flops_training"] += sum(self.step_flops[key])
        self.counters["flops_full"] += self.full_flops[shape]
        started = time.perf_counter()
        global_loss, flops, flops_full = distributed.all_reduce_sum(
            [loss.item() * share, self._flops_total(), self.counters["flops_full"]], self.dist)
        if not math.isfinite(global_loss):
            last = checkpoints(self.handle.out) if self.dist.is_main else []
            kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            kept = distributed.broadcast_object(kept, self.dist)
            self._write_summary("failed", step, error=f"loss became {global_loss} at step {step + 1}")
            raise TrainingError(f"the loss became {global_loss} at step {step + 1} (epoch {epoch + 1}); {kept}. "
                                f"Lower the learning rate (now {c.lr}) and start again")
        lr = self._update()
        self.counters["train_seconds"] += seconds + time.perf_counter() - started
        self.trainable_params = max(self.trainable_params, _count_params(self.model, self.trainable))
        row = {"type": "train", "step": step + 1, "epoch": epoch + (index + 1) / self.steps_per_epoch,
               "loss": global_loss, "lr": lr, "flops": flops, "flops_full": flops_full,
               "time": self.counters["train_seconds"] + self.counters["selection_seconds"],
               "total_steps": self.total_steps}
        self.writer.append("metrics", row)
        return row

    def _wrapped(self) -> torch.nn.Module:
        """The model wrapped in a DDP whose reducer covers exactly the tensors trained now.

        DDP all-reduces only the parameters that required grad when it was built, so a tensor unfrozen by a
        re-selection would silently stay unsynchronised under the old wrapper: the model is re-wrapped whenever the
        trainable set changes (a few collectives to check parameter shapes; no weights are sent). With a fixed
        trainable set the wrapper is reused.
        """
        key = frozenset(n for n, p in self.model.named_parameters() if p.requires_grad)
        if self._ddp is None or key != self._ddp_key:
            started = time.perf_counter()
            self._ddp = None  # the old wrapper's reducer and its hooks go first
            self._ddp = distributed.data_parallel(self.model, candidates=self.profile.names, device=self.device)
            self._ddp_key = key
            self.counters["ddp_wraps"] += 1
            self.counters["ddp_wrap_seconds"] += time.perf_counter() - started
        return self._ddp if self._ddp is not None else self.model

    def _forward(self, batch: dict, step: int, epoch: int) -> torch.Tensor:
        loss = model_loss(self.model, batch)
        if not torch.isfinite(loss):
            value = loss.item()
            last = checkpoints(self.handle.out)
            kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            self._write_summary("failed", step, error=f"loss became {value} at step {step + 1}")
            raise TrainingError(f"the loss became {value} at step {step + 1} (epoch {epoch + 1}); {kept}. "
                                f"Lower the learning rate (now {self.config.lr}) and start again")
        return loss

    def _flops_total(self) -> float:
        return self.counters["flops_training"] + self.counters["flops_selection"]

    def _evaluate(self, epoch: int, step: int) -> dict:
        from .evaluate import validation_loss  # imported when needed: rouge-score's nltk costs seconds per process

        started = time.perf_counter()
        with torch.random.fork_rng(devices=rng_devices(self.model.parameters())):
            if self.dist.enabled:  # each rank scores a contiguous part; the token-weighted means are combined
                part = distributed.chunk(self.val_rows, self.dist)
                local = validation_loss(self.model, self.tokenizer, part, batch_size=self.config.batch_size) \
                    if part else 0.0
                tokens = sum(distributed.label_tokens(r, self.is_enc_dec) for r in part)
                total, count = distributed.all_reduce_sum([local * tokens, tokens], self.dist)
                loss = total / max(count, 1)
            else:
                loss = validation_loss(self.model, self.tokenizer, self.val_rows, batch_size=self.config.batch_size)
        self.counters["eval_seconds"] += time.perf_counter() - started
        row = {"type": "eval", "split": "validation", "step": step, "epoch": epoch, "loss": loss}
        self.writer.append("metrics", row)
        return row

    # ------------------------------------------------------------------------------------------ checkpoints

    def _checkpoint(self, name: str, epoch: int, index: int, step: int) -> dict:
        params = dict(self.model.named_parameters())
        tensors = {}
        for pname in self.profile.names:
            for field_name, value in self.optimizer.state.get(params[pname], {}).items():
                tensors[f"{pname}::{field_name}"] = torch.as_tensor(value).detach().cpu()
        state = {"global_step": step, "epoch": epoch, "index": index, "trainable": self.trainable,
                 "selection_index": self.selection_index, "counters": self.counters,
                 "trainable_params": self.trainable_params,
                 "scheduler": self.scheduler.state_dict(), "rng": _rng_state(),
                 # FLOPs already measured: a resumed run must not re-measure them, since a step run under
                 # FlopCounterMode computes gradients that differ from an unmeasured one in the last bits
                 "measured": {"step": [[list(names), shape, list(counts)]
                                       for (names, shape), counts in self.step_flops.items()],
                              "full": [[shape, total] for shape, total in self.full_flops.items()]}}
        if not self.dist.enabled:
            path = self.writer.save_checkpoint(name, self.model, tensors, state, self.config.keep_checkpoints)
            return {"type": "checkpoint", "step": step, "path": str(path)}
        # every rank's counters and RNG go into rank 0's checkpoint; the weights must be identical on every rank
        fingerprints = distributed.all_gather_object(distributed.weights_fingerprint(self.model), self.dist)
        if len(set(fingerprints)) > 1:
            raise TrainingError(f"the ranks' weights diverged by step {step} (fingerprints {fingerprints}); this is a "
                                "bug: report it with the command line")
        state["world_size"] = self.dist.world_size
        state["weights_fingerprint"] = fingerprints[0]
        state["ranks"] = distributed.all_gather_object(
            {"counters": self.counters, "rng": state["rng"], "measured": state["measured"]}, self.dist)
        path = distributed.on_main(lambda: self.writer.save_checkpoint(name, self.model, tensors, state,
                                                                       self.config.keep_checkpoints), self.dist)
        return {"type": "checkpoint", "step": step, "path": str(path)}

    def _restore(self) -> tuple[int, int, int]:
        loaded: dict = {}

        def load() -> dict:
            latest = checkpoints(self.handle.out)[-1]
            loaded["tensors"], state = load_checkpoint(latest, self.model)
            trained_on = state.get("world_size", 1)
            if trained_on != self.dist.world_size:
                raise ValueError(f"{latest} was written by a run on {trained_on} process(es); resume it on "
                                 f"{trained_on} (now {self.dist.world_size}): exact resume needs every rank's state")
            return state

        state = distributed.on_main(load, self.dist)
        tensors = distributed.broadcast_tensors(loaded.get("tensors"), self.dist)
        distributed.broadcast_module(self.model, self.dist)  # rank 0 read the weights
        if self.dist.enabled:
            own = state["ranks"][self.dist.rank]
            state = {**state, "counters": own["counters"], "rng": own["rng"], "measured": own["measured"]}
        params = dict(self.model.named_parameters())
        self.trainable = state["trainable"]
        set_trainable(self.model, self.trainable, self.optimizer, candidates=self.profile.names)
        for key, value in tensors.items():
            pname, field_name = key.split("::")
            self.optimizer.state[params[pname]][field_name] = value.to(params[pname].device)
        self.scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # the scheduler's state does not carry the learning rate it last set
        self.selection_index = state["selection_index"]
        self.counters = state["counters"]
        self.trainable_params = state["trainable_params"]
        measured = state.get("measured", {})
        self.step_flops = {(tuple(names), _shape_key(shape)): tuple(counts)
                           for names, shape, counts in measured.get("step", [])}
        self.full_flops = {_shape_key(shape): total for shape, total in measured.get("full", [])}
        _set_rng_state(state["rng"])
        self.writer.truncate_after(state["global_step"])
        return state["epoch"], state["index"], state["global_step"]

    # ------------------------------------------------------------------------------------------------- the end

    def _final(self, step: int) -> Iterator[dict]:
        from .evaluate import generate_summaries, rouge

        c = self.config
        scores: dict[str, float] = {}
        if c.eval_rouge:
            started = time.perf_counter()
            for split, data in self.eval_data.items():
                if len(data) == 0:
                    continue
                sources = list(data["source"])
                if self.dist.enabled:  # each rank generates for a contiguous part, gathered back in order
                    sources = distributed.chunk(sources, self.dist)
                predictions = generate_summaries(self.model, self.tokenizer, sources,
                                                 max_source_tokens=c.max_source_tokens,
                                                 max_new_tokens=c.max_target_tokens, num_beams=c.num_beams) \
                    if sources else []
                if self.dist.enabled:
                    predictions = [p for part in distributed.all_gather_object(predictions, self.dist) for p in part]
                result = rouge(predictions, list(data["target"]))
                scores.update({f"{split}_{k}": v for k, v in result.items()})
                if split == "test":
                    scores.update(result)
                row = {"type": "eval", "split": split, "step": step, **result,
                       "examples": [{"prediction": p, "reference": r}
                                    for p, r in zip(predictions[:5], list(data["target"])[:5])]}
                self.writer.append("metrics", row)
                yield row
            self.counters["eval_seconds"] += time.perf_counter() - started
        yield self._finish("finished", step, scores)

    def _finish(self, status: str, step: int, scores: dict | None = None) -> dict:
        self._write_summary(status, step, **(scores or {}))
        self.handle.status = status
        self.handle.summary = self.summary
        return {"type": "done", "status": status, "step": step, "summary": self.summary}

    def _write_summary(self, status: str, step: int, **extra: Any) -> None:
        """Write the summary (rank 0) and keep it in `self.summary` (every rank); under DDP a collective.

        FLOPs are summed over the ranks (`flops_total` is what all processes spent; `flops_per_rank` and
        `flops_ratio_per_rank` break it down); times and peak memory are the largest of any rank.
        """
        counters = self.counters
        mine = {"flops_training": counters["flops_training"], "flops_selection": counters["flops_selection"],
                "flops_full": counters["flops_full"],
                "wall_seconds": counters["train_seconds"] + counters["selection_seconds"],
                "selection_seconds": counters["selection_seconds"], "eval_seconds": counters["eval_seconds"],
                "peak_memory_bytes": getattr(getattr(self, "memory", None), "peak", None),
                "ddp_wraps": counters.get("ddp_wraps"), "ddp_wrap_seconds": counters.get("ddp_wrap_seconds")}
        ranks = distributed.all_gather_object(mine, self.dist)
        self.summary = distributed.on_main(lambda: self._build_summary(status, step, ranks, extra), self.dist)

    def _build_summary(self, status: str, step: int, ranks: list[dict], extra: dict) -> dict:
        evals = [r for r in read_jsonl(self.handle.out / "metrics.jsonl") if r["type"] == "eval"
                 and r["split"] == "validation" and "loss" in r]
        per_rank = [r["flops_training"] + r["flops_selection"] for r in ranks]
        training = sum(r["flops_training"] for r in ranks)
        selection = sum(r["flops_selection"] for r in ranks)
        full = sum(r["flops_full"] for r in ranks)
        total = training + selection
        peaks = [r["peak_memory_bytes"] for r in ranks if r["peak_memory_bytes"] is not None]
        summary = {
            "label": self.config.name, "scheme": self.spec.name, "rho": self.spec.rho, "k": self.spec.k,
            "model": self.config.model, "dataset": self.config.dataset, "status": status, "steps": step,
            "flops_total": total, "flops_training": training,
            "flops_selection": selection, "flops_full_equivalent": full,
            "flops_ratio": total / full if full else None,
            "flops_ratio_training": training / full if full else None,
            "rouge1": None, "rouge2": None, "rougeL": None, "rougeLsum": None,
            "val_loss": evals[-1]["loss"] if evals else None,
            "wall_seconds": max(r["wall_seconds"] for r in ranks),
            "selection_seconds": max(r["selection_seconds"] for r in ranks),
            "eval_seconds": max(r["eval_seconds"] for r in ranks),
            "peak_memory_bytes": max(peaks) if peaks else None,
            "trainable_params": self.trainable_params,
            "total_params": sum(p.numel() for p in self.model.parameters()),
            "train_examples": len(self.train_rows), "truncated_sources": self.truncated,
            "selections": self.selection_index,
            "world_size": self.dist.world_size, "flops_per_rank": per_rank,
            "flops_ratio_per_rank": [f / r["flops_full"] if r["flops_full"] else None for f, r in zip(per_rank, ranks)],
            **extra,
        }
        if self.dist.enabled:
            summary["distributed"] = {
                "backend": self.dist.backend, "world_size": self.dist.world_size,
                "global_batch": self.config.batch_size,
                "rank_batches": [len(range(r, self.config.batch_size, self.dist.world_size))
                                 for r in range(self.dist.world_size)],
                "flops_training_per_rank": [r["flops_training"] for r in ranks],
                "flops_selection_per_rank": [r["flops_selection"] for r in ranks],
                "flops_full_per_rank": [r["flops_full"] for r in ranks],
                "wall_seconds_per_rank": [r["wall_seconds"] for r in ranks],
                "peak_memory_bytes_per_rank": [r["peak_memory_bytes"] for r in ranks],
                "ddp": "re-wrapped when the trainable set changes (find_unused_parameters=False)",
                "ddp_wraps": ranks[0]["ddp_wraps"],
                "ddp_wrap_seconds": max(r["ddp_wrap_seconds"] or 0.0 for r in ranks),
            }
        self.writer.write_summary(summary)
        return summary


def _linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`transformers.get_linear_schedule_with_warmup(optimizer, 0, total_steps)`, the same floats and state dict,
    without importing transformers' training utilities (they import peft: seconds at the start of every process)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_linear_decay, total_steps=total_steps))


def _linear_decay(step: int, *, total_steps: int) -> float:
    return max(0.0, float(total_steps - step) / float(max(1, total_steps)))


def _cost_key(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple:
    """What a step's FLOPs depend on besides the trainable set: the batch's tensor shapes and scored positions."""
    shapes = tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()))
    return shapes + (("scored_positions", (scored_positions(model, batch),)),)


def _shape_key(shape: list) -> tuple:
    """A batch-shape key read back from JSON: ((name, (dims...)), ...)."""
    return tuple((name, tuple(dims)) for name, dims in shape)


def _backward(loss: torch.Tensor) -> None:
    """Backpropagate, unless the selection trains nothing (a budget too small for any useful tensor)."""
    if loss.requires_grad:
        loss.backward()


def _count_params(model: torch.nn.Module, names: list[str]) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


class _NoRecords:
    """The run writer of ranks other than 0 under DDP: rank 0 alone writes (and reads) the run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def write_config(self, config: dict) -> None:
        pass

    def write_summary(self, summary: dict) -> None:
        pass

    def append(self, kind: str, row: dict) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def save_checkpoint(self, name: str, *args: Any, **kwargs: Any) -> Path:
        return self.root / "checkpoints" / name


class _adapters_disabled:
    """Inside, a peft model computes as its base model (to measure what full fine-tuning would cost)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inner = model.disable_adapter() if hasattr(model, "disable_adapter") else None

    def __enter__(self):
        return self.inner.__enter__() if self.inner is not None else None

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc) if self.inner is not None else False


class _PeakMemory:
    """Peak memory while training: CUDA's allocator peak, or on a CPU the peak resident set above the start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None
        self._done = threading.Event()

    def __enter__(self) -> "_PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        process = psutil.Process()
        base = process.memory_info().rss
        self.peak = 0

        def sample() -> None:
            while not self._done.wait(0.05):
                self.peak = max(self.peak, process.memory_info().rss - base)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._done.set()
            self._thread.join()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    state["numpy"] = [state["numpy"][0], state["numpy"][1].tolist(), *state["numpy"][2:]]
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
