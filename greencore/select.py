"""Choice of the tensors to train under a FLOPs budget, exact up to cost bucketing (docs/method.md,
"The selection problem").

Problem: maximise `sum(m * I)` subject to `sum(m * t_dw) + prefix[d] <= budget`, where d is the deepest selected
tensor and `prefix[d]` the activation-gradient FLOPs paid down to it. For every candidate deepest tensor d the
budget left after `t_dw[d] + prefix[d]` is filled by a 0/1 knapsack over the tensors nearer the loss; that
knapsack is built incrementally as d moves away from the loss, so the whole search is O(N * T) for T cost buckets,
one vectorised `np.maximum` per tensor.

Weight-gradient costs are rounded *up* into buckets and capacities *down*, so a chosen mask never exceeds the real
budget. The real budget that rounding leaves unused is then filled greedily with the remaining candidates nearer the
loss than the deepest chosen one, and the real-valued cost of the result is checked again before it is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from .profile import TensorProfile

__all__ = ["DEFAULT_RESOLUTION", "Selection", "check_rho", "require_tensors", "round_rho_up", "select_tensors", "solve_selection"]

DEFAULT_RESOLUTION = 50_000
"""Buckets the total backward cost is divided into when `resolution` is None.

Measured by bench/bench_selector.py (bench/results/selector.md) on OPT-style profiles (16 tensors per block, MLP
weights 4x the attention weights, norms and biases with t_dw = 0) against the exact optimum, over rho 0.4-0.7. With
every tensor of a kind costing the same, as in a real profile, the objective gap at 50,000 buckets is <= 1.3e-4 on
average and 2.2e-3 at worst for N = 100..2000 (at 10,000: up to 9.3e-4 average, 3.8e-3 worst); one solve takes
3-31 ms for N = 516..2000 on a shared 2-core machine, and the keep table needs about one byte per positive-importance
tensor per bucket (~35 MB for N = 2000). 100,000 buckets doubles the time for little further gain.
"""


@dataclass
class Selection:
    """The tensors chosen for one training phase and what they are predicted to cost."""

    mask: np.ndarray
    trainable: list[str]
    rho: float
    predicted_ratio: float
    objective: float
    chain_ratio: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "mask": [bool(x) for x in self.mask],
            "trainable": list(self.trainable),
            "rho": float(self.rho),
            "predicted_ratio": float(self.predicted_ratio),
            "objective": float(self.objective),
            "chain_ratio": float(self.chain_ratio),
        }


def solve_selection(
    t_dy: Any, t_dw: Any, importance: Any, budget: float, resolution: int | None = None
) -> np.ndarray:
    """Mask maximising total importance with `sum(m*t_dw) + sum(t_dy[:d]) <= budget` (d = deepest selected index).

    Arrays are in backprop order (index 0 nearest the loss); the empty mask costs 0. Non-positive importances are
    never selected. With integer costs and `resolution` equal to `sum(t_dy) + sum(t_dw)` the result is optimal;
    otherwise it is never over budget and at least as good as the optimum for t_dw rounded up to multiples of
    `(sum(t_dy) + sum(t_dw)) / resolution`.
    """
    t_dy = _vector(t_dy, "t_dy")
    t_dw = _vector(t_dw, "t_dw")
    importance = _vector(importance, "importance")
    _check_costs(t_dy, t_dw, importance, budget, resolution)
    dy_before = np.concatenate(([0.0], np.cumsum(t_dy)))

    def cost(mask: np.ndarray) -> float:
        if not mask.any():
            return 0.0
        deepest = int(np.flatnonzero(mask)[-1])
        return float(t_dw[mask].sum() + t_dy[:deepest].sum())

    total = float(t_dy.sum() + t_dw.sum())
    return _solve_prefix(dy_before[: len(t_dw)], t_dw, importance, float(budget), total, resolution, cost)


def select_tensors(
    profile: TensorProfile, importance: Any, rho: float, resolution: int | None = None
) -> Selection:
    """Best tensors to train so that one step costs at most `rho` times a full fine-tuning step.

    Handles tied tensors (reach[k] > k) by ordering candidates by (reach, index): the candidate with the largest
    reach then decides the activation-gradient prefix, exactly as `profile.chain_cost` charges it.
    """
    importance = _vector(importance, "importance")
    if len(importance) != len(profile):
        raise ValueError(
            f"importance has {len(importance)} entries but the profile has {len(profile)} tensors; "
            "pass one importance per profiled tensor, in the profile's order"
        )
    check_rho(profile, rho)
    full = profile.full_flops
    budget = max(0.0, rho * full - profile.t_fp)
    _check_costs(profile.t_dy, profile.t_dw, importance, budget, resolution)
    reach = profile.reach
    if len(reach) and (reach.min() < 0 or reach.max() > len(profile)):
        raise ValueError(f"profile.reach must lie in [0, {len(profile)}], got {reach.min()}..{reach.max()}")

    order = np.lexsort((np.arange(len(profile)), reach))
    dy_before = np.concatenate(([0.0], np.cumsum(profile.t_dy)))

    def cost(sorted_mask: np.ndarray) -> float:
        mask = np.zeros(len(profile), dtype=bool)
        mask[order] = sorted_mask
        return profile.chain_cost(mask)

    total = float(profile.t_dy.sum() + profile.t_dw.sum())
    sorted_mask = _solve_prefix(
        dy_before[reach[order]], profile.t_dw[order], importance[order], budget, total, resolution, cost
    )
    mask = np.zeros(len(profile), dtype=bool)
    mask[order] = sorted_mask
    return Selection(
        mask=mask,
        trainable=[name for name, keep in zip(profile.names, mask) if keep],
        rho=float(rho),
        predicted_ratio=profile.step_flops(mask) / full,
        objective=float(importance[mask].sum()),
        chain_ratio=(profile.t_fp + profile.chain_cost(mask)) / full,
    )


def check_rho(profile: TensorProfile, rho: float) -> None:
    """Refuse a budget under which no selection trains a tensor, naming the smallest rho that trains one.

    A step pays the forward pass (`profile.min_rho` of a full step) whatever it trains; the cheapest single tensor
    adds its weight gradient and the activation gradients down to it (`profile.min_training_rho`). Below that every
    selection is empty and a "training" run would only run forward passes.
    """
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.integer, np.floating)) or not math.isfinite(rho) \
            or not 0.0 < rho <= 1.0:
        raise ValueError(f"rho={rho!r} must be a finite fraction of full fine-tuning FLOPs in (0, 1]")
    floor = profile.min_training_rho
    if rho < floor:
        cheapest = profile.names[int(np.argmin(profile.single_tensor_costs()))]
        raise ValueError(
            f"rho={rho:g} trains no tensor of this model: the forward pass alone costs {profile.min_rho:.3f} of a "
            f"full step and training its cheapest tensor ({cheapest}) brings a step to {floor:.3f}; "
            f"choose rho >= {round_rho_up(floor):.3f}"
        )


def require_tensors(selection: Selection, metric: str) -> None:
    """Refuse a selection that trains nothing (every tensor the budget affords scored importance <= 0)."""
    if not selection.trainable:
        raise ValueError(
            f"the selection at rho={selection.rho:g} trains no tensor: every tensor it can afford has importance "
            f"<= 0 under the {metric!r} metric; raise rho or choose another importance metric"
        )


def round_rho_up(rho: float) -> float:
    """`rho` rounded up to 3 decimals: the value a message suggests, never below what it must exceed."""
    value = math.ceil(rho * 1000) / 1000
    return min(1.0, value if value >= rho else value + 0.001)


def _bucket_unit(prefix: np.ndarray, t_dw: np.ndarray, unit: float) -> float:
    """A bucket size that divides every cost when the costs are whole numbers with a common factor (FLOP counts of
    matmuls share large powers of two), so a selection that costs exactly the budget still fits; else `unit`."""
    costs = np.concatenate([t_dw, prefix])
    if not np.all(costs == np.floor(costs)) or costs.max(initial=0) >= 2**62:
        return unit
    g = 0
    for c in costs:
        if c > 0:
            g = math.gcd(g, int(c))
    return unit if g == 0 else g * max(1, math.floor(unit / g))


def _solve_prefix(
    prefix: np.ndarray,
    t_dw: np.ndarray,
    importance: np.ndarray,
    budget: float,
    total: float,
    resolution: int | None,
    cost: Callable[[np.ndarray], float],
) -> np.ndarray:
    """Solve with candidates ordered so that `prefix` is non-decreasing; `cost` is the real cost to verify."""
    useful = importance > 0
    if cost(useful) <= budget:
        return useful
    resolution = DEFAULT_RESOLUTION if resolution is None else resolution
    unit = _bucket_unit(prefix, t_dw, total / resolution)
    shrink = 0.0
    while True:  # float rounding can put a mask a few ulps over; solve again for a smaller budget until it fits
        mask = _knapsack_chain(prefix, t_dw, importance, budget - shrink, unit)
        mask = _fill_slack(mask, prefix, t_dw, importance, budget - shrink)
        over = cost(mask) - budget
        if over <= 0:
            return mask
        shrink = max(2 * shrink, over)  # once shrink > budget the mask is empty and costs 0


def _knapsack_chain(
    prefix: np.ndarray, t_dw: np.ndarray, importance: np.ndarray, budget: float, unit: float
) -> np.ndarray:
    """The bucketed O(N * T) dynamic program: best deepest candidate plus a knapsack over the candidates before it."""
    mask = np.zeros(len(t_dw), dtype=bool)
    items = np.flatnonzero(importance > 0)
    if budget < 0 or len(items) == 0:
        return mask
    weights = np.ceil(t_dw[items] / unit).astype(np.int64)
    capacity = int(min(math.floor(budget / unit), weights.sum()))
    best_value = np.zeros(capacity + 1)
    keep = np.zeros((len(items), capacity + 1), dtype=bool)
    best, best_row, best_cap = 0.0, -1, 0
    for row, (k, w) in enumerate(zip(items, weights)):
        room = budget - t_dw[k] - prefix[k]
        if room >= 0:
            cap = int(min(math.floor(room / unit), capacity))
            value = importance[k] + best_value[cap]
            if value > best:
                best, best_row, best_cap = value, row, cap
        if w > capacity:
            continue
        gain = best_value[: capacity + 1 - w] + importance[k]
        keep[row, w:] = gain > best_value[w:]
        np.maximum(best_value[w:], gain, out=best_value[w:])
    if best_row < 0:
        return mask
    mask[items[best_row]] = True
    cap = best_cap
    for row in range(best_row - 1, -1, -1):
        if keep[row, cap]:
            mask[items[row]] = True
            cap -= weights[row]
    return mask


def _fill_slack(
    mask: np.ndarray, prefix: np.ndarray, t_dw: np.ndarray, importance: np.ndarray, budget: float
) -> np.ndarray:
    """Greedily add unselected candidates before the deepest one into the real budget that rounding left unused."""
    if not mask.any():
        return mask
    deepest = int(np.flatnonzero(mask)[-1])
    room = budget - t_dw[mask].sum() - prefix[deepest]
    spare = np.flatnonzero(~mask[:deepest] & (importance[:deepest] > 0))
    ratio = np.divide(importance[spare], t_dw[spare], out=np.full(len(spare), np.inf), where=t_dw[spare] > 0)
    for k in spare[np.argsort(-ratio, kind="stable")]:
        if t_dw[k] <= room:
            mask[k] = True
            room -= t_dw[k]
    return mask


def _vector(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (one value per tensor), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf at indices {np.flatnonzero(~np.isfinite(arr))[:5].tolist()}")
    return arr


def _check_costs(
    t_dy: np.ndarray, t_dw: np.ndarray, importance: np.ndarray, budget: float, resolution: int | None
) -> None:
    if not len(t_dy) == len(t_dw) == len(importance):
        raise ValueError(
            f"t_dy, t_dw and importance must have one entry per tensor, got lengths "
            f"{len(t_dy)}, {len(t_dw)}, {len(importance)}"
        )
    for name, arr in (("t_dy", t_dy), ("t_dw", t_dw)):
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError(f"{name} must hold finite FLOP counts >= 0; fix the profile")
    if not isinstance(budget, (int, float, np.integer, np.floating)) or not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget={budget!r} must be a finite number of FLOPs >= 0")
    if resolution is not None and (
        isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1
    ):
        raise ValueError(f"resolution={resolution!r} must be an integer >= 1 (number of cost buckets) or None")
