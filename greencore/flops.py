"""FLOPs counting: one `FlopCounterMode` configuration for every count greencore makes, and the measurement of a
training step with a given set of trainable tensors.

`FlopCounterMode` has no formulas for the CPU kernels of `scaled_dot_product_attention`, so on a CPU it would count
attention as 0 FLOPs. We register the same formulas torch uses for the CUDA kernels, so attention is counted whichever
attention implementation a model uses.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["flop_counter", "flop_registry", "measure_training_flops", "model_loss", "rng_devices"]

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


def model_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Call the model on a batch and return its scalar training loss."""
    out = model(**batch)
    loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: the batch must contain `labels` (see greencore.data.collate)")
    return loss


def measure_training_flops(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    trainable: Any,
    *,
    names: list[str] | None = None,
) -> dict[str, int]:
    """Measure one forward+backward with FlopCounterMode, training exactly the tensors in `trainable`.

    `trainable` is a collection of parameter names, an object with a `.trainable` list (a `Selection`), or a boolean
    mask aligned with `names` (for example `profile.names`). Only those tensors require grad during the measurement;
    every parameter's `requires_grad` and `.grad`, and the RNG (dropout), are restored afterwards. Returns forward,
    backward and total FLOPs.
    """
    params = dict(model.named_parameters())
    wanted = _trainable_names(trainable, names)
    unknown = wanted - params.keys()
    if unknown:
        raise ValueError(f"not parameters of this model: {sorted(unknown)[:5]}")
    saved = {n: (p.requires_grad, p.grad) for n, p in params.items()}
    with torch.random.fork_rng(devices=rng_devices(params.values())):
        return _measure(model, batch, params, wanted, saved)


def _measure(model, batch, params, wanted, saved) -> dict[str, int]:
    try:
        for n, p in params.items():
            p.requires_grad_(n in wanted)
            p.grad = None
        with flop_counter() as counter:
            loss = model_loss(model, batch)
        forward = counter.get_total_flops()
        backward = 0
        if loss.requires_grad:
            with flop_counter() as counter:
                loss.backward()
            backward = counter.get_total_flops()
    finally:
        for n, p in params.items():
            p.requires_grad_(saved[n][0])
            p.grad = saved[n][1]
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
