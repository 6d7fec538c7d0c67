"""Setting a run up: the data, the model as its scheme trains it, the profile, the optimizer and the schedule.

`setup(config, dist, writer)` returns a `RunState`, everything the loop works on. Every scheme gets the same data,
optimizer (AdamW over all candidate tensors; frozen ones simply get no gradient), linear schedule and evaluation.
Under DDP and FSDP2 every rank builds the same global batches and trains on its shard of each (`RunData.epoch`); under
FSDP2 the model is sharded (`distributed.shard_model`) before the optimizer is built over its sharded tensors. The task
(`config.task_spec`) says what the data is, how it becomes rows and whether the model gets a classification head.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..data import collate, pad_batch, scored_targets
from ..meta import meta_twin, twin_batch
from ..models import check_batch_shape, classifier_head, load_model, set_attention
from ..profile import TensorProfile, profile_model
from ..records import RunWriter
from ..schemes import Scheme
from ..select import check_rho
from ..trainable import parameters_by_name, set_trainable
from .precision import Precision
from . import distributed
from ..energy import EnergyMeter
from .accounting import FlopsAccount, cost_key
from .config import TrainConfig, flag

__all__ = ["PAD_MULTIPLE", "RunData", "RunState", "TrainingError", "load_data", "setup"]

PAD_MULTIPLE = 16  # batches are padded to a multiple of this, so few distinct shapes need measuring
PROFILE_CANDIDATES = 256  # batches of the first epoch among which the profiling batch's shape is chosen


class TrainingError(ValueError):
    """A run could not go on (for example its loss became NaN); the message says what to change."""


@dataclass
class RunData:
    """A run's encoded splits and its batches: global batches in a seeded order, this rank's shard of each."""

    tokenizer: Any
    prompt: str | None  # summarization: "tldr" or "chat" (a config's "auto" resolved for this tokenizer)
    train_rows: list[dict]
    val_rows: list[dict]
    train_split: Any  # the training split as loaded (a classifier's majority class comes from it)
    eval_data: dict[str, Any]  # the validation and test splits as loaded, for the final evaluation
    truncated: int
    is_encoder_decoder: bool
    batch_size: int
    seed: int
    total_steps: int
    dist: distributed.DistInfo
    device: torch.device

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_rows) // self.batch_size

    def epoch(self, epoch: int) -> Iterator[tuple[dict, float]]:
        """The epoch's batches: this rank's shard, padded and on the device, with its share of the batch's targets."""
        return self._shards(self._global_batches(epoch))

    def probes(self, index: int, count: int) -> list[tuple[dict, float]]:
        """The probe batches of selection `index` (their own seeded draw, so the data order is untouched)."""
        groups = distributed.batch_indices(len(self.train_rows), self.batch_size, seed=self.seed * 7_919 + index + 1)
        return list(self._shards(groups[:count]))

    def profiling_batch(self, model: torch.nn.Module) -> dict:
        """The batch the profile is made on: one of the first epoch's, of the cost key most of its batches have.

        A selection's cost ratio depends on the batch's shape (on an encoder-decoder, on the summary's length), so a
        budget set on the commonest shape holds best over the epoch. Collating batches costs no model FLOPs; the
        first PROFILE_CANDIDATES global batches are looked at.
        """
        counts: collections.Counter = collections.Counter()
        first_of_key = {}
        for group in self._global_batches(0)[:PROFILE_CANDIDATES]:
            batch = pad_batch(self.tokenizer, collate(self.tokenizer, [self.train_rows[i] for i in group]), PAD_MULTIPLE)
            key = cost_key(model, batch)
            counts[key] += 1
            first_of_key.setdefault(key, batch)
        return self.to_device(first_of_key[counts.most_common(1)[0][0]])

    def _global_batches(self, epoch: int) -> list[list[int]]:
        """Row indices of the epoch's global batches, in the epoch's seeded order."""
        return distributed.batch_indices(len(self.train_rows), self.batch_size, seed=self.seed * 1_000_003 + epoch)

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _shards(self, groups: list[list[int]]) -> Iterator[tuple[dict, float]]:
        rows = self.train_rows
        for group in groups:
            mine = distributed.shard(group, self.dist)
            total = sum(scored_targets(rows[i], self.is_encoder_decoder) for i in group)
            local = sum(scored_targets(rows[i], self.is_encoder_decoder) for i in mine)
            batch = pad_batch(self.tokenizer, collate(self.tokenizer, [rows[i] for i in mine]), PAD_MULTIPLE)
            yield self.to_device(batch), local / max(total, 1)


@dataclass
class RunState:
    """Everything a training run works on while it trains."""

    config: TrainConfig
    scheme: Scheme
    dist: distributed.DistInfo
    device: torch.device
    writer: RunWriter
    model: torch.nn.Module
    tokenizer: Any
    data: RunData
    profile: TensorProfile  # of the tensors the scheme may train, made on `data.profiling_batch`
    candidates: list[str]  # the tensors full fine-tuning trains (a peft model's base weights)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    trainable: list[str]
    replicas: distributed.Replicas
    account: FlopsAccount = field(default_factory=FlopsAccount)
    energy: EnergyMeter = field(default_factory=lambda: EnergyMeter(enabled=False))
    selection_index: int = 0
    importance: list[float] | None = None  # the score the last selection used (`importance_ema` carries it on)
    trainable_params: int = 0
    memory: Any = None  # the `summary.PeakMemory` of the training loop, once it runs
    precision: Precision = field(default_factory=lambda: Precision("fp32", torch.device("cpu")))
    attention: str = "eager"  # the attention kernels the model runs (`models.set_attention`)
    strategy: str = "single"  # "single", "ddp" or "fsdp" (`distributed.resolve_strategy`)

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded over the ranks (FSDP2): every forward pass is then a collective."""
        return self.strategy == "fsdp"

    def budget(self, step: int) -> float:
        """The FLOPs budget of the selection made before `step`: the scheme's rho, or under `rho_shift` the mean,
        over the steps this selection trains, of a budget falling linearly from rho + shift at step 0 to rho - shift
        at the run's end. A line's mean over [a, b] is its value at (a + b) / 2, so the selections' budgets weighted
        by the steps they train average to rho over the run."""
        c, rho, total = self.config, self.scheme.rho, self.data.total_steps
        if not c.rho_shift:
            return rho
        end = min(total, step + c.interval * (self.data.steps_per_epoch if c.interval_unit == "epoch" else 1))
        return rho + c.rho_shift * (1 - (step + end) / total)


def setup(config: TrainConfig, dist: distributed.DistInfo, writer: RunWriter) -> RunState:
    """Load the model and data, let the scheme wrap the model, profile it, and build the optimizer and schedule."""
    scheme, task = config.spec, config.task_spec
    strategy = distributed.resolve_strategy(config.strategy, dist)
    if strategy == "fsdp" and config.strategy == "auto":  # what the sharded engine does not run is refused here too
        try:
            dataclasses.replace(config, strategy="fsdp")
        except ValueError as err:
            raise ValueError(f"--strategy auto picked fsdp (accelerate launch is configured for FSDP): {err}") from None
    device = distributed.resolve_device(config.device, dist)
    splits = task.load_splits(config)
    model, tokenizer = load_model(config.model, seed=config.seed, device=device, num_labels=task.num_labels(splits))
    attention = set_attention(model, "eager" if strategy == "fsdp" else config.attention, device)  # see TrainConfig
    precision = Precision(config.precision, device)
    check_batch_shape(model, config.batch_size, task.longest(config, bool(model.config.is_encoder_decoder)))
    data = load_data(config, tokenizer, bool(model.config.is_encoder_decoder), dist, device, splits=splits)
    model.train()
    probe = data.profiling_batch(model)
    twin = None
    if strategy == "fsdp":
        if model.config.is_encoder_decoder:
            raise ValueError(f"--strategy fsdp: {config.model} is an encoder-decoder model, which the sharded engine "
                             "does not run yet (its full fine-tuning FLOPs cannot be measured on a weightless "
                             "twin); use --strategy ddp")
        # profiled, and later measured, on a weightless twin: tracing the real model would hold a whole-model
        # activation graph on every rank before it is sharded
        twin = meta_twin(model)
    traced, traced_batch = (model, probe) if twin is None else (twin, twin_batch(probe))
    with precision.autocast():  # the kernels a step runs (fused attention's may depend on the dtype)
        base = profile_model(traced, traced_batch, split_tied=config.split_tied)
    candidates = list(base.names)
    profile = base
    head = classifier_head(model)
    if scheme.uses_peft:
        model = scheme.wrap(model, base, config)
        candidates = [n for n, p in model.named_parameters() if not p.requires_grad]
        try:
            with precision.autocast():
                profile = profile_model(model, probe)
        except Exception as err:
            raise ValueError(f"{scheme.name} does not run on {config.model}: {err}") from err
    if config.gradient_checkpointing:
        _checkpoint_activations(model, config.model)
    account = FlopsAccount(profile_key=cost_key(model, probe), predict=functools.partial(_predicted_step, profile))
    if scheme.reselects:
        account.counters.flops_selection += profile.t_fp  # the profiling forward pass is GreenTrainer's cost
        check_rho(profile, scheme.rho)  # before the importance pass: a budget that trains nothing fails now

    trainable = scheme.initial_tensors(profile, head)
    if not trainable:
        raise ValueError(f"{scheme.label} trains no tensor of {config.model}: choose another scheme")
    distributed.broadcast_module(model, dist)  # every rank starts from rank 0's weights
    if strategy == "fsdp":
        account.twin = twin
        distributed.shard_model(model)
    params = parameters_by_name(model)  # a split profile names a tied weight twice: the optimizer holds it once
    optimizer = torch.optim.AdamW(list({id(params[n]): params[n] for n in profile.names}.values()), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_linear_decay,
                                                                               total_steps=data.total_steps))
    set_trainable(model, trainable, optimizer, candidates=profile.names)
    state = RunState(config=config, scheme=scheme, dist=dist, device=device, writer=writer, model=model,
                    tokenizer=tokenizer, data=data, profile=profile, candidates=candidates, optimizer=optimizer,
                    scheduler=scheduler, trainable=trainable, account=account,
                    replicas=distributed.Replicas(model, profile.names, device, dist, account,
                                                  sharded=strategy == "fsdp"),
                    precision=precision, attention=attention, strategy=strategy,
                    energy=EnergyMeter(enabled=config.energy, country=config.country,
                                       grid_intensity=config.grid_intensity,
                                       gpu_ids=[device.index or 0] if device.type == "cuda" else None))
    if scheme.reselects and config.rho_shift:  # the last selection's budget is the run's lowest
        every = config.interval * (data.steps_per_epoch if config.interval_unit == "epoch" else 1)
        lowest = state.budget((data.total_steps - 1) // every * every)
        try:
            check_rho(profile, lowest)
        except ValueError as err:
            raise ValueError(f"{flag('rho_shift')} {config.rho_shift:g} lowers the last selection's budget to "
                             f"{lowest:.3f}: {err}; or a smaller shift") from err
    return state


def _predicted_step(profile: TensorProfile, trainable: list[str]) -> float | None:
    """The profile's FLOPs of a step training `trainable`, or None for tensors the profile does not hold."""
    if not set(trainable) <= set(profile.names):
        return None
    return profile.step_flops(trainable)


def _checkpoint_activations(model: torch.nn.Module, name: str) -> None:
    """Non-reentrant activation checkpointing: each block's activations are recomputed in the backward pass instead
    of kept. Non-reentrant, because it works with frozen inputs and with the trainable set changing between steps.

    transformers also makes the input embeddings' output require grad (reentrant checkpointing needs that); it is
    undone here, since it would send every backward pass through the whole network (recomputing every block) and
    undo what training only the tensors nearest the loss saves. A block the backward enters is recomputed, up to
    the last activation its backward needs."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"--gradient-checkpointing: {name} ({type(model).__name__}) does not support activation "
                         "checkpointing; train without it")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()


def load_data(c: TrainConfig, tokenizer: Any, is_enc_dec: bool, dist: distributed.DistInfo | None = None,
              device: torch.device | None = None, *, splits: Any = None) -> RunData:
    """The splits of `c` (loaded, or the `splits` already loaded) encoded as a run encodes them (prompt, lengths,
    dropped examples); public so that a baseline without training (the zero-shot model) is scored on exactly a run's
    validation rows."""
    dist = dist or distributed.DistInfo()
    device = device or torch.device("cpu")
    task = c.task_spec
    splits = splits if splits is not None else task.load_splits(c)
    prompt = task.prompt(tokenizer, is_enc_dec, c)
    train_rows, truncated = task.encode(tokenizer, splits["train"], c, is_encoder_decoder=is_enc_dec, prompt=prompt)
    val_rows, _ = task.encode(tokenizer, splits["validation"], c, is_encoder_decoder=is_enc_dec, prompt=prompt)
    if len(train_rows) < c.batch_size:
        raise ValueError(f"the training split has {len(train_rows)} usable examples, fewer than one batch of "
                         f"{c.batch_size}{_too_long(splits['train'], train_rows, c)}; or use more data "
                         f"(--max-train-examples) or a smaller --batch-size")
    if not val_rows:
        raise ValueError(f"the validation split has no usable example{_too_long(splits['validation'], val_rows, c)};"
                         f" or use more data (--max-eval-examples)")
    if c.batch_size < dist.world_size:
        raise ValueError(f"batch_size={c.batch_size} is the global batch, split across the "
                         f"{dist.world_size} processes: use a batch size of at least {dist.world_size}")
    total = len(train_rows) // c.batch_size * c.epochs
    return RunData(tokenizer=tokenizer, prompt=prompt, train_rows=train_rows, val_rows=val_rows,
                   train_split=splits["train"], eval_data={split: splits[split] for split in ("validation", "test")},
                   truncated=truncated, is_encoder_decoder=is_enc_dec, batch_size=c.batch_size, seed=c.seed,
                   total_steps=min(total, c.max_steps) if c.max_steps else total, dist=dist, device=device)


def _too_long(split: Any, rows: list[dict], c: TrainConfig) -> str:
    """The part of a message that says how many examples were dropped for their summary's length, and what to raise."""
    dropped = len(split) - len(rows)
    if not dropped:
        return ""
    return (f": {dropped} of its {len(split)} examples have a summary longer than --max-target-tokens "
            f"{c.max_target_tokens} (with eos) and were dropped; raise --max-target-tokens")


def _linear_decay(step: int, *, total_steps: int) -> float:
    """`transformers.get_linear_schedule_with_warmup(optimizer, 0, total_steps)`'s factor, without importing
    transformers' training utilities (they import peft: seconds at the start of every process)."""
    return max(0.0, float(total_steps - step) / float(max(1, total_steps)))
