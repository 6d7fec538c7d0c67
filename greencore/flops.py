"""FLOPs counting: one `FlopCounterMode` configuration for every count greencore makes, the training loss whose
FLOPs it counts (`model_loss`: a causal LM's output head only where the loss scores a token), and the measurement of
a training step with a given set of trainable tensors.

`FlopCounterMode` has no formulas for the CPU kernels of `scaled_dot_product_attention`, so on a CPU it would count
attention as 0 FLOPs. We register the same formulas torch uses for the CUDA kernels, so attention is counted whichever
attention implementation a model uses.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .data import IGNORE_INDEX
from .trainable import parameters_by_name, trained_as

__all__ = [
    "flop_counter", "flop_registry", "measure_training_flops", "model_loss", "own_loss", "rng_devices",
    "scored_positions",
]

aten = torch.ops.aten


def _cpu_sdpa_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CUSTOM_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flop_counter() -> FlopCounterMode:
    """A silent `FlopCounterMode` that also counts the CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=CUSTOM_FORMULAS)


def flop_registry() -> dict:
    """The op -> FLOPs formula table `flop_counter()` uses, keyed by op overload packet."""
    return flop_counter().flop_registry


def rng_devices(tensors: Iterable[torch.Tensor]) -> list[int]:
    """The CUDA devices whose RNG `torch.random.fork_rng` must save so that work on `tensors` leaves it unchanged."""
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


SCORED_PER_ROW = 8  # the head runs on a multiple of this many positions per batch row: few distinct costs arise


def model_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Call the model on a batch and return its scalar training loss: mean cross-entropy over the labelled tokens.

    A causal language model computes its output head (hidden size x vocabulary, often the largest matmul of the
    model) only at the positions the loss scores, instead of at every position as `transformers` does. The loss and
    its gradients are the same as the model's own (`own_loss`); the FLOPs are not: with a prompt of 100 tokens and a
    summary of 20, the head costs a sixth. The scored positions are padded (with ignored ones) to a multiple of
    SCORED_PER_ROW per batch row, so that batches of one shape cost one of a few amounts. When that would be every
    position anyway, and for other models (encoder-decoder, classifiers), this is the model's own loss.
    """
    head = _causal_lm_head(model) if "labels" in batch else None
    width = _scored_width(batch["labels"]) if head is not None else 0
    if not width:
        return own_loss(model, batch)
    targets = batch["labels"][:, 1:]  # the hidden state at position t predicts the token at t + 1
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    scored, pad = len(rows), width - len(rows)
    rows = torch.nn.functional.pad(rows, (0, pad))  # padding points at position (0, 0), its target is ignored
    cols = torch.nn.functional.pad(cols, (0, pad))
    wanted = targets[rows, cols]
    wanted[scored:] = IGNORE_INDEX

    def gather_scored(module, args):
        hidden = args[0]
        if hidden.shape[:2] != batch["labels"].shape:
            raise ValueError(f"the output head got hidden states of shape {tuple(hidden.shape)} for labels of shape "
                             f"{tuple(batch['labels'].shape)}: this model changes the sequence length (virtual "
                             f"tokens?); train it with its own loss (greencore.flops.own_loss)")
        return (hidden[rows.to(hidden.device), cols.to(hidden.device)],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(gather_scored)
    try:
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        handle.remove()
    logits = out["logits"] if isinstance(out, Mapping) else out.logits
    return torch.nn.functional.cross_entropy(logits.float(), wanted.to(logits.device), ignore_index=IGNORE_INDEX)


def own_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The loss the model computes itself from the batch's `labels` (what `transformers.Trainer` backpropagates).

    On a model whose weights are on the meta device, labels kept on the CPU (`greencore.meta.meta_batch`) join it
    there: with every position scored, the model's own loss depends only on their shape.
    """
    if "labels" in batch and next(model.parameters()).device.type == "meta":
        batch = {**batch, "labels": batch["labels"].to("meta")}
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: the batch must contain `labels` (see greencore.data.collate)")
    return loss


def scored_positions(model: torch.nn.Module, batch: Mapping[str, Any]) -> int:
    """How many positions `model_loss` runs the output head on for `batch`; 0 when it uses the model's own loss.

    The scored positions rounded up to a multiple of SCORED_PER_ROW x rows (at least one multiple). Part of a batch's
    cost key: two batches of the same tensor shapes can differ here.
    """
    if "labels" not in batch or _causal_lm_head(model) is None:
        return 0
    return _scored_width(batch["labels"])


def _scored_width(labels: torch.Tensor) -> int:
    targets = labels[:, 1:]
    multiple = SCORED_PER_ROW * targets.shape[0]
    scored = int((targets != IGNORE_INDEX).sum())
    width = max(multiple, -(-scored // multiple) * multiple)
    return width if width < targets.numel() else 0  # no saving: the model's own loss, exactly


def _causal_lm_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The output head of a causal LM registered with `transformers` (under DDP / peft wrappers, or sharded by FSDP2,
    which makes the model an instance of a subclass of its own), else None."""
    base = getattr(model, "module", model)  # DistributedDataParallel
    peft_config = getattr(base, "active_peft_config", None)
    if peft_config is not None:
        if peft_config.is_prompt_learning:  # virtual tokens change the sequence length
            return None
        base = base.get_base_model()
    classes = _causal_lm_classes()
    if (not any(c.__name__ in classes for c in type(base).__mro__)
            or getattr(base.config, "is_encoder_decoder", False)):
        return None
    return base.get_output_embeddings()


def measure_training_flops(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    trainable: Any,
    *,
    names: list[str] | None = None,
) -> dict[str, int]:
    """Measure one forward+backward with FlopCounterMode, training exactly the tensors in `trainable`.

    `trainable` is a collection of parameter names, an object with a `.trainable` list (a `Selection`), or a boolean
    mask aligned with `names` (for example `profile.names`; a split profile's other names of a tied weight train only
    their module's use, as in `trainable.set_trainable`). Only those tensors require grad during the measurement;
    every parameter's `requires_grad` and `.grad`, and the RNG (dropout), are restored afterwards. Returns forward,
    backward and total FLOPs.
    """
    params = parameters_by_name(model)
    wanted = _trainable_names(trainable, names)
    unknown = wanted - params.keys()
    if unknown:
        raise ValueError(f"not parameters of this model: {sorted(unknown)[:5]}")
    with torch.random.fork_rng(devices=rng_devices(params.values())), trained_as(model, wanted, names or ()):
        with flop_counter() as counter:
            loss = model_loss(model, batch)
        forward = counter.get_total_flops()
        backward = 0
        if loss.requires_grad:
            with flop_counter() as counter:
                loss.backward()
            backward = counter.get_total_flops()
    return {"forward": int(forward), "backward": int(backward), "total": int(forward + backward)}


def _trainable_names(trainable: Any, names: list[str] | None) -> set[str]:
    if hasattr(trainable, "trainable"):
        return set(trainable.trainable)
    if isinstance(trainable, np.ndarray) and trainable.dtype == bool:
        if names is None or len(names) != len(trainable):
            raise ValueError("a boolean mask needs `names` of the same length (e.g. names=profile.names)")
        return {n for n, m in zip(names, trainable) if m}
    if isinstance(trainable, str):
        raise ValueError("trainable must be a collection of names, not a single string")
    return set(_iter_names(trainable))


def _iter_names(items: Iterable[Any]) -> Iterable[str]:
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"trainable must hold parameter names (str), got {type(item).__name__}")
        yield item


@functools.lru_cache(maxsize=1)
def _causal_lm_classes() -> frozenset[str]:
    """Class names `transformers` registers as causal LMs (AutoModelForCausalLM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ((v,) if isinstance(v, str) else v))
