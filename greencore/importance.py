"""Tensor importance: how much the training loss would drop if a tensor were updated.

The default `taylor` metric is the first-order Taylor estimate of the loss change caused by the update the optimizer
would apply, `I[k] = -sum(grad_k * delta_w_k)` (docs/method.md, "Importance"). The update is computed from the
optimizer's formulas and its current state, so nothing is stepped and nothing needs restoring: weights, `.grad`,
`requires_grad` flags, the optimizer's state and the global RNG are exactly as before the call.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .flops import model_loss, rng_devices
from .profile import TensorProfile, profile_model
from .trainable import parameters_by_name, separate_uses

__all__ = ["GRADIENT_METRICS", "IMPORTANCE_METRICS", "STRUCTURAL_METRICS", "GradientReduce", "gradient_scores",
           "tensor_importance"]

STRUCTURAL_METRICS = ("uniform", "params")
"""Metrics that need neither data nor weights (so they work on a meta-device model): every tensor worth 1 (a
selection then trains as many tensors as the budget allows), or worth its parameter count (as many parameters).
They describe the architecture's costs, not what training would learn."""

GRADIENT_METRICS = ("taylor", "grad_l1", "fisher")
"""Metrics computed from probe gradients: the ones whose probes `rho` makes cheaper."""

IMPORTANCE_METRICS = (*GRADIENT_METRICS, "magnitude", "random", *STRUCTURAL_METRICS)


GradientReduce = Callable[[list[torch.Tensor], torch.Tensor], float]
"""`reduce(grads, loss)`: sum the probe gradients (in place) and the loss over every process, return the summed loss.

The distributed engine passes `training.distributed.gradient_reduce`; a single process passes nothing."""


def tensor_importance(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, Any]],
    optimizer: torch.optim.Optimizer | None = None,
    metric: str = "taylor",
    *,
    profile: TensorProfile | None = None,
    seed: int = 0,
    weights: Sequence[float] | None = None,
    reduce: GradientReduce | None = None,
    rho: float | None = None,
) -> np.ndarray:
    """Importance of each tensor of `profile` (profiled on the first batch when not given), averaged over `batches`.

    `taylor` uses the update of `optimizer` (Adam, AdamW or SGD, with its current state) or of a fresh AdamW with
    default hyper-parameters. `grad_l1` is sum(|grad|), `fisher` sum(grad**2), `magnitude` sum(|w|) and `random`
    a seeded uniform draw, for ablations; `uniform` (1 each) and `params` (the parameter count) are structural
    (`STRUCTURAL_METRICS`).

    Data-parallel use: every process passes its own shard of the same probe batches, `weights[i]` (its shard's share
    of batch i's label tokens) and `reduce`; each batch's gradient is then scaled, summed over the processes and
    scored there, so every process gets the scores of the global batches, as one process would compute them.

    With `rho`, a gradient metric (`GRADIENT_METRICS`) scores only the tensors a selection within rho could train
    (`TensorProfile.within_reach`) and gives the others 0: the probe's backward then stops at the deepest tensor
    within reach, and the selection at rho is the one full scores would give (no selection can hold the others).

    A split profile's entries for one tied weight (`profile_model(split_tied=True)`) are scored from the gradient of
    their own module's use, with the weight's optimizer state.

    A sharded model (FSDP2: the parameters are DTensors) computes its forward pass on gathered copies, which
    `torch.autograd.grad` cannot reach: each probe then runs a backward pass, FSDP reduce-scatters the gradients (each
    process holds its shard of the global batch's gradient, exactly as `reduce` would sum it), every process scores
    its shards (the metrics are sums over elements) and the scores are summed over the processes. `.grad` is left as
    it was.
    """
    if metric not in IMPORTANCE_METRICS:
        raise ValueError(f"unknown importance metric {metric!r}; choose one of {', '.join(IMPORTANCE_METRICS)}")
    batches = list(batches)
    if profile is None:
        if not batches:
            raise ValueError("need at least one probe batch to profile the model")
        profile = profile_model(model, batches[0])
    params = parameters_by_name(model)
    tensors = [params[n] for n in profile.names]
    if metric == "random":
        return np.random.default_rng(seed).random(len(tensors))
    if metric == "uniform":
        return np.ones(len(tensors))
    if metric == "params":
        return np.array([float(t.numel()) for t in tensors])
    mesh = _mesh(tensors)
    if metric == "magnitude":
        return _summed(np.array([float(_local(t.detach()).abs().sum()) for t in tensors]), mesh)
    if not batches:
        raise ValueError(f"metric {metric!r} needs at least one probe batch")
    weights = [1.0] * len(batches) if weights is None else [float(w) for w in weights]
    if len(weights) != len(batches):
        raise ValueError(f"{len(weights)} weights for {len(batches)} probe batches")
    update = _update_rule(optimizer, tensors) if metric == "taylor" else None

    scored = np.ones(len(tensors), dtype=bool) if rho is None else profile.within_reach(rho)
    wanted = [t for t, keep in zip(tensors, scored) if keep]
    total = np.zeros(len(tensors))
    if not wanted:
        return total
    if mesh is not None and reduce is not None:
        raise ValueError("a sharded model's gradients are reduced by FSDP: pass no `reduce`")
    saved = {id(t): (t, t.requires_grad, t.grad) for t in tensors}
    try:
        for t in tensors:
            t.requires_grad_(False)
        with separate_uses(model, [n for n, keep in zip(profile.names, scored) if keep]) as uses:
            inputs = list(uses.values())  # a tied weight's other names: a leaf of its own, the gradient of that use
            for t in inputs:
                t.requires_grad_(True)  # a tensor out of reach builds no graph: the backward stops above it
            for batch, weight in zip(batches, weights):
                with torch.random.fork_rng(devices=rng_devices(tensors)):
                    loss = model_loss(model, batch) * weight  # exact for the weight 1 of a single process
                    if mesh is None:
                        grads = list(torch.autograd.grad(loss, inputs, allow_unused=True))
                    else:  # FSDP averages over the processes: scaled by their number, the sum `reduce` would give
                        for t in inputs:
                            t.grad = None
                        (loss * mesh.size()).backward()
                        grads = [t.grad for t in inputs]
                used = [g is not None for g in grads]
                if mesh is not None:
                    value = float(_summed(np.array([loss.item()]), mesh)[0])
                elif reduce is None:
                    value = loss.item()
                else:  # every process must send a gradient for every scored tensor, used here or not
                    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
                    value = reduce(grads, loss.detach().float())
                if not math.isfinite(value):
                    raise ValueError(f"the probe loss is {value}: importance cannot be computed on a diverged model")
                for k, g, ok in zip(np.flatnonzero(scored), grads, used):
                    if ok:
                        total[k] += _score(metric, tensors[k], g, update)
    finally:
        for t, flag, grad in saved.values():
            t.requires_grad_(flag)
            t.grad = grad
    return _summed(total, mesh) / len(batches)


def gradient_scores(tensors: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
                    optimizer: torch.optim.Optimizer | None = None, metric: str = "taylor") -> np.ndarray:
    """The score of each tensor from a gradient computed elsewhere (a training step's own, with `probe="step"`), as
    `tensor_importance` scores a probe batch's; a tensor without a gradient scores 0."""
    if metric not in GRADIENT_METRICS:
        raise ValueError(f"{metric!r} is not scored from gradients; choose one of {', '.join(GRADIENT_METRICS)}")
    update = _update_rule(optimizer, list(tensors)) if metric == "taylor" else None
    scores = np.array([0.0 if g is None else _score(metric, t, g, update) for t, g in zip(tensors, grads)])
    return _summed(scores, _mesh(tensors))


def _mesh(tensors: Sequence[torch.Tensor]) -> Any:
    """The device mesh of sharded (DTensor) parameters, None for ordinary tensors."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    from torch.distributed.tensor import DTensor

    return next((t.device_mesh for t in tensors if isinstance(t, DTensor)), None)


def _local(t: Any) -> Any:
    """This process's shard of a DTensor (a tensor as it is otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _summed(scores: np.ndarray, mesh: Any) -> np.ndarray:
    """Per-tensor sums over the processes' shards (`scores` as they are without a mesh)."""
    if mesh is None:
        return scores
    t = torch.tensor(scores, dtype=torch.float64, device=mesh.device_type)
    torch.distributed.all_reduce(t, group=mesh.get_group())
    return t.cpu().numpy()


def _score(metric: str, p: torch.Tensor, g: torch.Tensor, update: Any) -> float:
    g = _local(g)
    if metric == "grad_l1":
        return float(g.abs().sum())
    if metric == "fisher":
        return float((g.float() ** 2).sum())
    return float(-(g.float() * update(p, g)).sum())


_ADAMW_DEFAULTS = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults


def _update_rule(optimizer: torch.optim.Optimizer | None, tensors: list[torch.Tensor]):
    """A function (parameter, grad) -> the update `optimizer.step()` would add to it; reads the optimizer only."""
    if optimizer is None:
        group_of = {id(t): _ADAMW_DEFAULTS for t in tensors}
        state: Mapping = {}
        rule = _adam_update
    else:
        if isinstance(optimizer, torch.optim.Adam):
            rule = _adam_update
        elif isinstance(optimizer, torch.optim.SGD):
            rule = _sgd_update
        else:
            raise ValueError(f"taylor importance supports Adam, AdamW and SGD optimizers, not {type(optimizer).__name__}")
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        state = optimizer.state
        missing = sum(id(t) not in group_of for t in tensors)
        if missing:
            raise ValueError(
                f"the optimizer does not hold {missing} of the profiled tensors; create it over all parameters "
                "(GreenTrainer freezes tensors through requires_grad, not by leaving them out of the optimizer)"
            )
    return lambda p, g: rule(_local(p.detach()).float(), _local(g).float(), group_of[id(p)],
                             {k: _local(v) for k, v in state.get(p, {}).items()})


def _adam_update(w: torch.Tensor, g: torch.Tensor, group: Mapping, state: Mapping) -> torch.Tensor:
    """torch.optim.Adam/AdamW's update for one step, from the current state (amsgrad and maximize included)."""
    if group["maximize"]:
        g = -g
    lr, (beta1, beta2), eps, wd = float(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
    decoupled = group.get("decoupled_weight_decay", False)
    if wd and not decoupled:
        g = g + wd * w
    step = float(state["step"]) + 1 if "step" in state else 1.0
    exp_avg = state["exp_avg"].float() if "exp_avg" in state else torch.zeros_like(w)
    exp_avg_sq = state["exp_avg_sq"].float() if "exp_avg_sq" in state else torch.zeros_like(w)
    m = beta1 * exp_avg + (1 - beta1) * g
    v = beta2 * exp_avg_sq + (1 - beta2) * g * g
    if group["amsgrad"]:
        v = torch.maximum(state["max_exp_avg_sq"].float(), v) if "max_exp_avg_sq" in state else v
    bias1 = 1 - beta1**step
    bias2 = 1 - beta2**step
    delta = -(lr / bias1) * m / (v.sqrt() / bias2**0.5 + eps)
    if wd and decoupled:
        delta = delta - lr * wd * w
    return delta


def _sgd_update(w: torch.Tensor, g: torch.Tensor, group: Mapping, state: Mapping) -> torch.Tensor:
    """torch.optim.SGD's update for one step, from the current momentum buffer."""
    if group["maximize"]:
        g = -g
    if group["weight_decay"]:
        g = g + group["weight_decay"] * w
    momentum = group["momentum"]
    if momentum:
        buf = state.get("momentum_buffer")
        buf = g if buf is None else momentum * buf.float() + (1 - group["dampening"]) * g
        g = g + momentum * buf if group["nesterov"] else buf
    return -float(group["lr"]) * g
