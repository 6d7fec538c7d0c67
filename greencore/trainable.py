"""Apply a selection to a model: the one place that decides what a frozen tensor keeps.

A frozen tensor holds no gradient and no optimizer state, so freezing saves memory as well as FLOPs. A tensor that is
selected again later starts from a clean optimizer state (fresh Adam moments and step count), as if it had never
been trained: its old moments describe gradients from weights that have since moved.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["set_trainable"]


def set_trainable(
    model: torch.nn.Module,
    names: Iterable[str],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    candidates: Iterable[str] | None = None,
) -> None:
    """Make exactly `names` (among `candidates`, by default every parameter) require grad.

    Candidates that are not in `names` are frozen: their `.grad` is dropped and so is their state in `optimizer`.
    Parameters outside `candidates` are not touched (for example the frozen base weights of a LoRA model).
    """
    params = dict(model.named_parameters())
    wanted = set(names)
    pool = set(params) if candidates is None else set(candidates)
    unknown = (wanted | pool) - params.keys()
    if unknown:
        raise ValueError(f"not parameters of this model: {sorted(unknown)[:5]}")
    if not wanted <= pool:
        raise ValueError(f"cannot train tensors outside the candidates: {sorted(wanted - pool)[:5]}")
    for name in pool:
        p = params[name]
        train = name in wanted
        if not train:
            p.grad = None
            if optimizer is not None:
                optimizer.state.pop(p, None)
        p.requires_grad_(train)
