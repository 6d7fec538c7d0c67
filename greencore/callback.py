"""GreenTrainer inside a plain `transformers.Trainer`: a callback that re-selects the tensors to train.

`GreenTrainerCallback` selects at the start of training and then every `interval_steps` optimizer steps: it draws a
few probe batches, scores every tensor's importance with the Trainer's own optimizer, picks the best tensors under the
FLOPs budget `rho` and freezes the rest through `requires_grad` (`set_trainable`). Selections happen in
`on_step_begin`, which the Trainer calls once per optimizer step, so with gradient accumulation they fall on
optimizer-step boundaries and never split an accumulated step.

Decisions:
- The model is profiled once per training run, on the first probe batch. FLOPs ratios barely depend on the batch
  shape (everything but attention is linear in the number of tokens) and profiling costs several training steps.
- Probe batches come from a private `DataLoader` over the Trainer's training dataset and collator, shuffled by its own
  seeded generator. Iterating the Trainer's loader would draw from the global RNG (changing the data order and
  dropout of the run) and register the loader with accelerate's gradient-accumulation bookkeeping.
- Importance is computed at each parameter group's base learning rate (`initial_lr`, set by LR schedulers). The
  Taylor score scales linearly with the learning rate, alike in every group, so the selection is the same whenever
  lr > 0; but during warm-up lr can be 0, which would score every tensor 0 and freeze the whole model.
- Selection runs in train mode: the profile must see the ops of a training step, the importance the training loss.
- When training ends every parameter requires grad again, so the model can be trained or saved like any other; the
  optimizer state dropped for frozen tensors is not restored.
- Under DDP (`torchrun` / `accelerate launch`, the Trainer's own process group) every rank makes the same selection:
  each rank draws its own probe batches (a `DistributedSampler` over the training set, seeded), the importance
  gradients are all-reduced, the profile is made on rank 0's first probe batch on every rank, and the selection is
  broadcast from rank 0. The Trainer wraps the model in DDP once, before training begins, while every parameter still
  requires grad; DDP then keeps every parameter in its reducer only with `find_unused_parameters=True` (the Trainer's
  default for transformers models without activation checkpointing), which is what lets a tensor frozen by one
  selection and unfrozen by a later one be all-reduced again. Without it (`ddp_find_unused_parameters=False`,
  activation checkpointing, `ddp_static_graph=True`) the callback refuses to start. The price: DDP searches the
  autograd graph every step and still all-reduces the frozen tensors' (zero) gradient buckets.
- FSDP (the Trainer's `fsdp`, `accelerate launch` with an FSDP configuration) is refused with the reason: use
  `greencore train --strategy fsdp` for sharded training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .flops import own_loss
from .importance import IMPORTANCE_METRICS, tensor_importance
from .profile import TensorProfile, profile_model
from .select import check_rho, require_tensors, select_tensors
from .trainable import set_trainable
from .training import distributed

__all__ = ["GreenTrainerCallback"]

logger = logging.getLogger(__name__)


class GreenTrainerCallback(TrainerCallback):
    """Trains only the tensors that fit a FLOPs budget of `rho` times full fine-tuning, re-selected periodically.

    `interval_steps=None` selects once, when training begins. `self.selections` lists every selection of the latest
    run (step, epoch, rho, trainable names, predicted_ratio, objective). Every Trainer log gains
    `green_predicted_ratio` and `green_trainable_tensors` for the selection in effect; they reach
    `trainer.state.log_history` and the callbacks after this one (the progress bar), not the `report_to`
    integrations, which the Trainer calls before any user callback.
    """

    def __init__(
        self,
        rho: float,
        interval_steps: int | None = None,
        probe_batches: int = 2,
        metric: str = "taylor",
        seed: int = 0,
    ) -> None:
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or not 0 < rho <= 1:
            raise ValueError(f"rho={rho!r} must be a fraction of full fine-tuning FLOPs in (0, 1]")
        if interval_steps is not None and (not _is_int(interval_steps) or interval_steps < 1):
            raise ValueError(f"interval_steps={interval_steps!r} must be an integer >= 1, or None to select once")
        if not _is_int(probe_batches) or probe_batches < 1:
            raise ValueError(f"probe_batches={probe_batches!r} must be an integer >= 1")
        if metric not in IMPORTANCE_METRICS:
            raise ValueError(f"unknown importance metric {metric!r}; choose one of {', '.join(IMPORTANCE_METRICS)}")
        if not _is_int(seed):
            raise ValueError(f"seed={seed!r} must be an integer")
        self.rho = float(rho)
        self.interval_steps = interval_steps
        self.probe_batches = probe_batches
        self.metric = metric
        self.seed = seed
        self.selections: list[dict[str, Any]] = []
        self._profile: TensorProfile | None = None
        self._probe_loader: DataLoader | None = None
        self._probe_iter: Iterator | None = None
        self._probe_epoch = 0
        self._last_selection_step: int | None = None
        self._dist = distributed.SINGLE

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Check the setup, then make the first selection (an infeasible rho fails here, before any step)."""
        model, optimizer = kwargs.get("model"), _unwrap(kwargs.get("optimizer"))
        if model is None or optimizer is None:
            raise ValueError(
                "GreenTrainerCallback needs the Trainer's model and optimizer; use it with Trainer.train()"
            )
        _refuse_fsdp(args, model)
        _check_all_trainable(model, optimizer)
        _keep_backward_short(args, model)
        self._dist = distributed.current()
        if self._dist.enabled:
            _check_ddp_follows_selections(args, model)
        self.selections = []
        self._profile = None
        self._probe_loader = _probe_loader(kwargs.get("train_dataloader"), args.per_device_train_batch_size, self.seed,
                                           self._dist)
        self._probe_iter = None
        self._probe_epoch = 0
        self._select(state, model, optimizer)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Re-select every `interval_steps` optimizer steps (not again at the step training began on)."""
        if self.interval_steps is None or state.global_step == self._last_selection_step:
            return
        if state.global_step % self.interval_steps == 0:
            self._select(state, kwargs["model"], _unwrap(kwargs["optimizer"]))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the selection in effect to the Trainer's log entry."""
        if not self.selections or logs is None:
            return
        current = self.selections[-1]
        extra = {
            "green_predicted_ratio": current["predicted_ratio"],
            "green_trainable_tensors": len(current["trainable"]),
        }
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Make every parameter trainable again and release the probe loader."""
        for p in kwargs["model"].parameters():
            p.requires_grad_(True)
        self._probe_loader = None
        self._probe_iter = None

    def _select(self, state: TrainerState, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Profile (once), score, select and apply; record the selection. The probes call the model the Trainer
        prepared, whose forward runs in the Trainer's precision (accelerate wraps it in autocast for bf16 / fp16)."""
        batches = self._next_probe_batches(_device_of(model))
        was_training = model.training
        model.train()
        info = self._dist
        try:
            if self._profile is None:
                # under DDP every rank profiles rank 0's first batch, so every rank has the same profile
                first = batches[0] if not info.enabled else _to_device(
                    distributed.broadcast_object(_to_device(batches[0], torch.device("cpu")), info), _device_of(model))
                self._profile = profile_model(model, first, loss_fn=own_loss)  # the loss Trainer computes
                check_rho(self._profile, self.rho)
            with _base_learning_rates(optimizer):  # under DDP, gradients summed over every rank's probe batches
                importance = tensor_importance(model, batches, optimizer, self.metric, profile=self._profile,
                                               seed=self.seed + len(self.selections),
                                               weights=[1.0 / info.world_size] * len(batches),
                                               reduce=distributed.gradient_reduce(info), rho=self.rho)
        finally:
            model.train(was_training)
        selection = distributed.on_main(lambda: select_tensors(self._profile, importance, self.rho), info)
        require_tensors(selection, self.metric)
        set_trainable(model, selection.trainable, optimizer)
        self._last_selection_step = state.global_step
        self.selections.append(
            {
                "step": state.global_step,
                "epoch": float(state.epoch or 0.0),
                "rho": selection.rho,
                "trainable": list(selection.trainable),
                "predicted_ratio": selection.predicted_ratio,
                "objective": selection.objective,
            }
        )
        if info.is_main:
            logger.info(
                "GreenTrainer selection at step %d: training %d of %d tensors, predicted %.3f of full step FLOPs "
                "(rho=%.3f)",
                state.global_step,
                len(selection.trainable),
                len(self._profile),
                selection.predicted_ratio,
                self.rho,
            )

    def _next_probe_batches(self, device: torch.device) -> list[dict[str, Any]]:
        """`probe_batches` batches from the private loader, restarting it when it runs out, moved to `device`."""
        assert self._probe_loader is not None, "on_train_begin builds the probe loader"
        batches: list[dict[str, Any]] = []
        restarted = False
        while len(batches) < self.probe_batches:
            if self._probe_iter is None:
                self._probe_iter = iter(self._probe_loader)
            try:
                batch = next(self._probe_iter)
            except StopIteration:
                if restarted:
                    raise ValueError("the training dataset yields no batch to probe importance with") from None
                self._probe_iter, restarted = None, True
                self._probe_epoch += 1
                if isinstance(self._probe_loader.sampler, DistributedSampler):  # a new seeded order, as shuffle gives
                    self._probe_loader.sampler.set_epoch(self._probe_epoch)
                continue
            restarted = False
            batches.append(_to_device(batch, device))
        return batches


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unwrap(optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer | None:
    """The torch optimizer inside accelerate's `AcceleratedOptimizer` (or any wrapper with an `.optimizer`)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _check_all_trainable(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """GreenTrainer decides what trains: every parameter must require grad and be held by the optimizer."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in model.named_parameters() if id(p) not in held]
    if missing:
        raise ValueError(
            f"the Trainer's optimizer does not hold {len(missing)} parameters (e.g. {missing[:3]}); "
            "GreenTrainerCallback freezes tensors itself, so leave every parameter trainable when creating the Trainer"
        )
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise ValueError(
            f"{len(frozen)} parameters do not require grad (e.g. {frozen[:3]}); GreenTrainerCallback decides which "
            "tensors train, so unfreeze every parameter before training"
        )


def _probe_loader(
    dataloader: Any, batch_size: int, seed: int, info: distributed.DistInfo = distributed.SINGLE
) -> DataLoader:
    """A loader over the same dataset and collator as the Trainer's, with its own seeded shuffling.

    Under DDP each rank draws from its own part of one seeded permutation (`DistributedSampler`).
    """
    if not isinstance(dataloader, DataLoader):
        raise ValueError(
            f"GreenTrainerCallback draws probe batches from the Trainer's train DataLoader, got {type(dataloader)!r}"
        )
    dataset = dataloader.dataset
    if info.enabled and not isinstance(dataset, IterableDataset):
        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=dataloader.collate_fn)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=not isinstance(dataset, IterableDataset),
        collate_fn=dataloader.collate_fn,
        generator=torch.Generator().manual_seed(seed),
    )


def _keep_backward_short(args: TrainingArguments, model: torch.nn.Module) -> None:
    """Under the Trainer's activation checkpointing, let the backward pass stop at the deepest selected tensor.

    transformers makes the input embeddings' output require grad when checkpointing is on, which sends every
    backward through the whole network (and recomputes every block): what training only the tensors nearest the loss
    saves would be spent anyway. Non-reentrant checkpointing (the default) does not need it, so it is removed;
    reentrant checkpointing does, so it is refused with the fix.
    """
    enabled = getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False)
    if not enabled:
        return
    kwargs = (getattr(args, "activation_checkpointing_kwargs", None)
              or getattr(args, "gradient_checkpointing_kwargs", None) or {})
    if kwargs.get("use_reentrant", False):
        raise ValueError("GreenTrainerCallback with reentrant activation checkpointing would backpropagate through "
                         "the whole network at every step; use non-reentrant checkpointing: "
                         "TrainingArguments(activation_checkpointing_kwargs={'use_reentrant': False})")
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()


def _refuse_fsdp(args: TrainingArguments, model: torch.nn.Module) -> None:
    """The callback does not run under FSDP (the Trainer's `fsdp`, an accelerate FSDP launch, sharded parameters)."""
    from_env = os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true", "yes")
    sharded = any(hasattr(p, "device_mesh") for p in model.parameters())
    if getattr(args, "fsdp", None) or from_env or sharded:
        raise ValueError(
            "GreenTrainerCallback does not support FSDP: there accelerate shards the model with its own wrapping "
            "policy before callbacks run, and the callback's profiling and probe passes, which run outside the "
            "Trainer's step, are not made to run in step on every rank over sharded tensors (nor tested so). For "
            "sharded GreenTrainer training use `greencore train --strategy fsdp` under torchrun or accelerate "
            "launch; with the Trainer, use DDP (the callback supports it)"
        )


def _check_ddp_follows_selections(args: TrainingArguments, model: torch.nn.Module) -> None:
    """Under DDP the Trainer's wrapper must keep every parameter in its reducer and tolerate frozen ones.

    Mirrors how `Trainer` chooses DDP's `find_unused_parameters` (the wrapper itself is not passed to callbacks).
    """
    find_unused = getattr(args, "ddp_find_unused_parameters", None)
    if find_unused is None:
        from transformers import PreTrainedModel

        if isinstance(model, PreTrainedModel):
            checkpointing = getattr(model, "is_activation_checkpointing", None)
            if checkpointing is None:
                checkpointing = getattr(model, "is_gradient_checkpointing", False)
            checkpointing = bool(checkpointing) or bool(
                getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False)
            )
            find_unused = not checkpointing
        else:
            find_unused = True
    if not find_unused or getattr(args, "ddp_static_graph", None):
        raise ValueError(
            "GreenTrainerCallback changes which tensors require grad during training; under DDP the Trainer's "
            "wrapper must expect frozen (unused) parameters: pass TrainingArguments(ddp_find_unused_parameters=True"
            ", ddp_static_graph=False) (with activation checkpointing, also use non-reentrant checkpointing: "
            "gradient_checkpointing_kwargs={'use_reentrant': False})"
        )


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    if not isinstance(batch, Mapping):
        raise ValueError(f"probe batches must be dicts of model inputs (with labels), got {type(batch).__name__}")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@contextlib.contextmanager
def _base_learning_rates(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Temporarily set each param group's lr to its schedule's base lr (`initial_lr`) where it has one."""
    saved = [group["lr"] for group in optimizer.param_groups]
    try:
        for group in optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr
