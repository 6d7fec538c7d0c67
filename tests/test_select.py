"""The selector against brute-force enumeration of every mask (docs/method.md, "The selection problem")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from greencore.profile import TensorProfile
from greencore.select import DEFAULT_RESOLUTION, Selection, select_tensors, solve_selection


def all_masks(n: int) -> np.ndarray:
    """Every boolean mask over n tensors, one per row (row 0 is the empty mask)."""
    return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)


def chain_costs(masks: np.ndarray, t_dy: np.ndarray, t_dw: np.ndarray) -> np.ndarray:
    """Backward cost of each mask by the definition: sum(m*t_dw) + sum(t_dy[:d]), d the deepest selected index."""
    n = masks.shape[1]
    deepest = n - 1 - np.argmax(masks[:, ::-1], axis=1)
    dy_before = np.concatenate(([0.0], np.cumsum(t_dy)))
    return np.where(masks.any(axis=1), masks.astype(float) @ t_dw + dy_before[deepest], 0.0)


def brute_force(masks: np.ndarray, costs: np.ndarray, importance: np.ndarray, budget: float) -> float:
    """Best total importance over the masks whose cost fits the budget."""
    values = masks.astype(float) @ importance
    return float(values[costs <= budget].max())


def random_integer_instance(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer costs with many zeros; importances with negatives, zeros and repeated values."""
    t_dy = rng.integers(0, 12, n) * (rng.random(n) < 0.8)
    t_dw = rng.integers(0, 12, n) * (rng.random(n) < 0.7)
    importance = np.round(rng.normal(0.3, 1.0, n), 1)
    importance[rng.random(n) < 0.15] = 0.0
    return t_dy.astype(float), t_dw.astype(float), importance


def test_integer_costs_match_brute_force_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(600):
        n = int(rng.integers(1, 13))
        t_dy, t_dw, importance = random_integer_instance(rng, n)
        total = int(t_dy.sum() + t_dw.sum())
        budget = float(rng.integers(0, total + 3))
        masks = all_masks(n)
        costs = chain_costs(masks, t_dy, t_dw)

        mask = solve_selection(t_dy, t_dw, importance, budget, resolution=max(total, 1))

        assert mask.dtype == bool and mask.shape == (n,)
        assert chain_costs(mask[None], t_dy, t_dw)[0] <= budget
        assert (importance[mask] > 0).all()
        assert importance[mask].sum() == pytest.approx(brute_force(masks, costs, importance, budget), abs=1e-9)


def tied_profile(rng: np.random.Generator, n: int) -> TensorProfile:
    """A random integer-cost profile in which some tensors are also used deeper in the network (reach > index)."""
    t_dy, t_dw, _ = random_integer_instance(rng, n)
    reach = np.arange(n)
    tied = rng.random(n) < 0.3
    reach[tied] = [rng.integers(k, n + 1) for k in np.flatnonzero(tied)]
    return TensorProfile(
        names=[f"t{k}" for k in range(n)], t_fp=float(rng.integers(0, 40)), t_dy=t_dy, t_dw=t_dw, reach=reach
    )


def test_select_tensors_with_tied_tensors_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    for _ in range(500):
        n = int(rng.integers(1, 11))
        profile = tied_profile(rng, n)
        importance = np.round(rng.normal(0.3, 1.0, n), 1)
        full = profile.full_flops
        rho = (profile.t_fp + rng.integers(0, int(full - profile.t_fp) + 2)) / full
        if full == 0 or rho > 1:
            rho = 1.0
        budget = rho * full - profile.t_fp
        masks = all_masks(n)
        costs = np.array([profile.chain_cost(m) for m in masks])
        floor = (profile.t_fp + costs[1:].min()) / full  # the cheapest non-empty mask, by enumeration
        assert profile.min_training_rho == pytest.approx(floor, rel=1e-12)
        if rho < floor * (1 - 1e-12):  # no non-empty mask fits: refused, naming the smallest rho that trains
            with pytest.raises(ValueError, match="trains no tensor"):
                select_tensors(profile, importance, rho)
            continue

        sel = select_tensors(profile, importance, rho, resolution=max(int(full - profile.t_fp), 1))

        assert profile.chain_cost(sel.mask) <= budget
        assert sel.objective == pytest.approx(brute_force(masks, costs, importance, budget), abs=1e-9)
        assert sel.objective == pytest.approx(importance[sel.mask].sum())
        assert sel.trainable == [name for name, m in zip(profile.names, sel.mask) if m]
        assert sel.chain_ratio == pytest.approx((profile.t_fp + profile.chain_cost(sel.mask)) / full)
        assert sel.predicted_ratio == pytest.approx(profile.step_flops(sel.mask) / full)
        assert sel.chain_ratio <= rho * (1 + 1e-12)


def test_solve_selection_agrees_with_select_tensors_on_untied_profiles() -> None:
    rng = np.random.default_rng(2)
    for _ in range(100):
        n = int(rng.integers(1, 30))
        t_dy, t_dw, importance = rng.random(n) * 1e6, rng.random(n) * 1e6, rng.normal(size=n)
        profile = TensorProfile(names=[str(k) for k in range(n)], t_fp=1e6, t_dy=t_dy, t_dw=t_dw, reach=np.arange(n))
        rho = float(rng.uniform(profile.min_training_rho, 1.0))
        budget = rho * profile.full_flops - profile.t_fp
        sel = select_tensors(profile, importance, rho)
        assert np.array_equal(sel.mask, solve_selection(t_dy, t_dw, importance, budget))


def test_real_costs_never_over_budget_and_near_optimal() -> None:
    """Real-valued costs: always feasible, and never worse than the exact optimum for a budget n buckets smaller.

    Rounding n knapsack costs up and the capacity down loses less than n buckets of (sum(t_dy)+sum(t_dw))/resolution,
    so the result must be at least the brute-force optimum at `budget - n * bucket`. At the default resolution every
    instance here matched the exact optimum (worst relative gap 2.3e-16, float summation order), as did all 2000 of a
    wider sweep; the assertions below leave room for a rare boundary case (worst 0.1%, 99% exact).
    """
    rng = np.random.default_rng(3)
    gaps = []
    for _ in range(1000):
        n = int(rng.integers(1, 13))
        t_dy = rng.uniform(0, 1e9, n) * (rng.random(n) < 0.8)
        t_dw = rng.uniform(0, 1e9, n) * (rng.random(n) < 0.7)
        importance = rng.normal(0.3, 1.0, n)
        total = float(t_dy.sum() + t_dw.sum())
        budget = float(rng.uniform(0, 1.1) * total)
        masks = all_masks(n)
        costs = chain_costs(masks, t_dy, t_dw)
        best = brute_force(masks, costs, importance, budget)

        for resolution in (None, 1, 37, 1000):
            mask = solve_selection(t_dy, t_dw, importance, budget, resolution=resolution)
            value = importance[mask].sum()
            slack = n * total / (resolution or DEFAULT_RESOLUTION)
            floor = brute_force(masks, costs, importance, budget - slack) if budget >= slack else 0.0
            assert chain_costs(mask[None], t_dy, t_dw)[0] <= budget
            assert floor - 1e-9 <= value <= best + 1e-9
            if resolution is None and best > 0:
                gaps.append((best - value) / best)
    assert max(gaps) <= 1e-3
    assert np.mean(np.array(gaps) <= 1e-12) >= 0.99


def test_budgets_on_a_float_boundary_are_never_exceeded() -> None:
    """Decimal costs and a budget equal to some mask's cost summed in another order: float rounding puts candidate
    masks an ulp over the budget, which the solver must detect and avoid."""
    rng = np.random.default_rng(6)
    for _ in range(3000):
        n = int(rng.integers(2, 8))
        t_dy = np.round(rng.random(n), 1) * (rng.random(n) < 0.5)
        t_dw = np.round(rng.random(n), 1) + 0.1
        importance = rng.random(n)
        target = rng.random(n) < 0.6
        target[-1] = True
        budget = float(sum(reversed(t_dw[target].tolist())) + sum(t_dy[: n - 1].tolist()))
        resolution = [None, int(rng.integers(1, 60))][int(rng.integers(2))]
        mask = solve_selection(t_dy, t_dw, importance, budget, resolution=resolution)
        deepest = np.flatnonzero(mask)[-1] if mask.any() else 0
        assert (t_dw[mask].sum() + t_dy[:deepest].sum() if mask.any() else 0.0) <= budget


def test_budget_zero_selects_only_free_tensors() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(1, 9))
        t_dy, t_dw, importance = random_integer_instance(rng, n)
        masks = all_masks(n)
        costs = chain_costs(masks, t_dy, t_dw)
        mask = solve_selection(t_dy, t_dw, importance, 0.0, resolution=max(int(t_dy.sum() + t_dw.sum()), 1))
        assert chain_costs(mask[None], t_dy, t_dw)[0] == 0
        assert importance[mask].sum() == pytest.approx(brute_force(masks, costs, importance, 0.0))


def test_free_tensor_nearest_the_loss_is_selected_at_budget_zero() -> None:
    mask = solve_selection([5.0, 5.0], [0.0, 3.0], [1.0, 2.0], 0.0)
    assert mask.tolist() == [True, False]


def test_budget_covering_everything_selects_every_positive_importance() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        n = int(rng.integers(1, 200))
        t_dy, t_dw, importance = rng.random(n), rng.random(n), rng.normal(size=n)
        mask = solve_selection(t_dy, t_dw, importance, float(t_dy.sum() + t_dw.sum()))
        assert np.array_equal(mask, importance > 0)


def test_all_non_positive_importances_give_the_empty_mask() -> None:
    importance = -np.arange(6, dtype=float)
    mask = solve_selection(np.ones(6), np.ones(6), importance, 100.0)
    assert not mask.any()
    profile = TensorProfile(names=list("abcdef"), t_fp=3.0, t_dy=np.ones(6), t_dw=np.ones(6), reach=np.arange(6))
    sel = select_tensors(profile, importance, 1.0)
    assert sel.trainable == [] and sel.objective == 0.0 and sel.chain_ratio == pytest.approx(profile.min_rho)


def test_ties_are_optimal_and_deterministic() -> None:
    n = 10
    t_dy, t_dw, importance = np.full(n, 2.0), np.full(n, 3.0), np.ones(n)
    masks = all_masks(n)
    costs = chain_costs(masks, t_dy, t_dw)
    for budget in (0.0, 3.0, 9.0, 14.0, 30.0, 47.0):
        first = solve_selection(t_dy, t_dw, importance, budget, resolution=50)
        assert importance[first].sum() == brute_force(masks, costs, importance, budget)
        for _ in range(3):
            assert np.array_equal(solve_selection(t_dy, t_dw, importance, budget, resolution=50), first)


def test_selection_to_dict_is_json() -> None:
    profile = TensorProfile(
        names=["a", "b", "c"], t_fp=4.0, t_dy=[1.0, 1.0, 1.0], t_dw=[2.0, 0.0, 2.0], reach=[0, 1, 2]
    )
    sel = select_tensors(profile, [1.0, 0.5, -1.0], 0.8)  # budget 0.8 * 11 - 4 = 4.8; {a, b} costs 2 + 0 + 1
    assert isinstance(sel, Selection)
    assert sel.trainable == ["a", "b"] and sel.chain_ratio == pytest.approx(7 / 11)
    data = json.loads(json.dumps(sel.to_dict()))
    assert data["trainable"] == sel.trainable and data["mask"] == sel.mask.tolist()
    assert data["rho"] == 0.8


@pytest.mark.parametrize("rho", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_rho_outside_unit_interval_is_rejected(rho: float) -> None:
    profile = TensorProfile(names=["a"], t_fp=1.0, t_dy=[1.0], t_dw=[1.0], reach=[0])
    with pytest.raises(ValueError, match="rho"):
        select_tensors(profile, [1.0], rho)


def test_rho_that_trains_no_tensor_names_the_smallest_that_does() -> None:
    # full step 1 + 1 + 1 = 3; training "a" alone costs 1 + 0.5 (its weight gradient) = 1.5, i.e. rho 0.5;
    # "b" alone also needs the activation gradient past "a": 1 + 0.5 + 0.5 = 2, rho 0.667
    profile = TensorProfile(names=["a", "b"], t_fp=1.0, t_dy=[0.5, 0.5], t_dw=[0.5, 0.5], reach=[0, 1])
    assert profile.min_rho == pytest.approx(1 / 3) and profile.min_training_rho == pytest.approx(0.5)
    for rho in (0.2, 1 / 3, 0.49):  # below the forward pass, and between it and the cheapest tensor
        with pytest.raises(ValueError, match=r"forward pass alone costs 0\.333.*\(a\) brings a step to 0\.500; "
                                             r"choose rho >= 0\.500"):
            select_tensors(profile, [1.0, 1.0], rho)
    assert select_tensors(profile, [1.0, 1.0], 0.5).trainable == ["a"]


def test_round_rho_up_never_suggests_a_value_below_the_floor() -> None:
    from greencore.select import round_rho_up

    assert [round_rho_up(x) for x in (0.4657, 0.466, 0.5, 0.9999, 1.0)] == [0.466, 0.466, 0.5, 1.0, 1.0]
    rng = np.random.default_rng(3)
    for x in rng.random(2000):
        assert x <= round_rho_up(x) <= x + 0.001 + 1e-12


def test_importance_length_mismatch_is_rejected() -> None:
    profile = TensorProfile(names=["a", "b"], t_fp=1.0, t_dy=[1.0, 1.0], t_dw=[1.0, 1.0], reach=[0, 1])
    with pytest.raises(ValueError, match="importance"):
        select_tensors(profile, [1.0], 0.9)


@pytest.mark.parametrize(
    ("t_dy", "t_dw", "importance", "budget", "resolution", "match"),
    [
        ([1.0, np.nan], [1.0, 1.0], [1.0, 1.0], 1.0, None, "t_dy"),
        ([1.0, 1.0], [np.inf, 1.0], [1.0, 1.0], 1.0, None, "t_dw"),
        ([1.0, 1.0], [1.0, 1.0], [1.0, np.nan], 1.0, None, "importance"),
        ([1.0, -1.0], [1.0, 1.0], [1.0, 1.0], 1.0, None, "t_dy"),
        ([1.0, 1.0], [-1.0, 1.0], [1.0, 1.0], 1.0, None, "t_dw"),
        ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], -1.0, None, "budget"),
        ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], float("nan"), None, "budget"),
        ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], float("inf"), None, "budget"),
        ([1.0, 1.0], [1.0], [1.0, 1.0], 1.0, None, "lengths"),
        ([1.0, 1.0], [1.0, 1.0], [1.0], 1.0, None, "lengths"),
        ([[1.0, 1.0]], [1.0, 1.0], [1.0, 1.0], 1.0, None, "1-D"),
        ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], 1.0, 0, "resolution"),
        ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], 1.0, 2.5, "resolution"),
    ],
)
def test_bad_input_is_rejected(t_dy, t_dw, importance, budget, resolution, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        solve_selection(t_dy, t_dw, importance, budget, resolution=resolution)


def test_an_exact_fit_is_found_when_costs_share_a_large_factor():
    # matmul FLOP counts share large powers of two; with buckets that do not divide them, a selection costing
    # exactly the budget would be rounded out of reach ({0, 1} costs 7g = budget; {2} alone is worth less)
    g = 7 * 2**20
    mask = solve_selection(np.zeros(3), np.array([3.0, 4.0, 6.0]) * g, np.array([1.0, 1.0, 1.5]), 7.0 * g,
                           resolution=20)
    assert mask.tolist() == [True, True, False]
