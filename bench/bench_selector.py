"""Speed and near-exactness of `solve_selection` on realistic transformer-shaped profiles.

Usage: python bench/bench_selector.py [--quick] [--results-dir DIR]

Profiles repeat an OPT-style block in backprop order (16 tensors: MLP fc1/fc2 weights 4x the q/k/v/o weights,
norms and biases with t_dw = 0, t_dy of a weight about its t_dw, attention adding to the t_dy of o), with a few
percent of random jitter and random positive and negative importances. The gap of each resolution is measured against
the exact optimum: costs are whole multiples of a small quantum, so solving with one bucket per quantum (about
100 buckets per d x d matmul, 50,000 to 200,000 in all) is exact.
Writes bench/results/selector.{json,md} (selector_quick.* with --quick, so a quick run never replaces a full one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import command_line, write_results  # noqa: E402
from greencore.select import DEFAULT_RESOLUTION, solve_selection  # noqa: E402

# (t_dw, t_dy) of each tensor of one block, in units of one d x d matmul, nearest the loss first.
BLOCK = [
    ("fc2.bias", 0, 0), ("fc2.weight", 4, 4), ("fc1.bias", 0, 0), ("fc1.weight", 4, 4),
    ("ln2.bias", 0, 0), ("ln2.weight", 0, 0), ("o.bias", 0, 0), ("o.weight", 1, 1.4),
    ("v.bias", 0, 0), ("v.weight", 1, 1), ("k.bias", 0, 0), ("k.weight", 1, 1),
    ("q.bias", 0, 0), ("q.weight", 1, 1), ("ln1.bias", 0, 0), ("ln1.weight", 0, 0),
]  # fmt: skip
UNIT = 2 * 512 * 2560**2  # FLOPs of one weight gradient of a 2560 x 2560 matmul over 512 tokens
QUANTUM = UNIT // 64  # costs are whole multiples of this, so one bucket per QUANTUM solves exactly


def make_profile(n: int, seed: int, jitter: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Random block-structured profile with n tensors: t_dy, t_dw, importance and forward FLOPs t_fp.

    `jitter` = 0 gives every tensor of a kind the same cost, as a profile of a real model does.
    """
    rng = np.random.default_rng(seed)
    pattern = np.array([(dw, dy) for _, dw, dy in BLOCK], dtype=float)
    base = np.resize(pattern, (n, 2)) * UNIT * rng.uniform(1 - jitter, 1 + jitter, (n, 2))
    t_dw, t_dy = (np.round(base / QUANTUM) * QUANTUM).T
    sign = np.where(rng.random(n) < 0.6, 1.0, -1.0)
    importance = sign * rng.lognormal(0.0, 1.0, n) * (1 + t_dw / UNIT)
    return t_dy, t_dw, importance, float(t_dy.sum())


def exact_resolution(t_dy: np.ndarray, t_dw: np.ndarray) -> int:
    """Resolution whose bucket is exactly QUANTUM: with it the solver returns the exact optimum."""
    buckets = round(float(t_dy.sum() + t_dw.sum()) / QUANTUM)
    assert float(t_dy.sum() + t_dw.sum()) / buckets == QUANTUM
    return buckets


def budget_for(t_dy: np.ndarray, t_dw: np.ndarray, t_fp: float, rho: float) -> float:
    """Backward budget for rho: rho * full step - forward."""
    return rho * (t_fp + t_dy.sum() + t_dw.sum()) - t_fp


def median_ms(args: tuple, resolution: int, repeats: int) -> float:
    """Median wall time of one solve, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        solve_selection(*args, resolution=resolution)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def objective(args: tuple, resolution: int) -> float:
    """Total importance of the mask chosen at this resolution."""
    return float(args[2][solve_selection(*args, resolution=resolution)].sum())


def run(quick: bool) -> tuple[dict, str]:
    """Run the benchmark; return the JSON payload and the Markdown tables."""
    headline_sizes = [516] if quick else [516, 1000]
    headline_rhos = [0.5] if quick else [0.4, 0.5, 0.7]
    headline_resolutions = [10_000] if quick else [10_000, DEFAULT_RESOLUTION]
    sizes = [100, 516] if quick else [100, 250, 516, 1000, 2000]
    resolutions = [1000, 10_000] if quick else [1000, 5000, 10_000, 20_000, 50_000, 100_000]
    jitters = [0.05] if quick else [0.0, 0.05]
    gap_rhos = [0.5] if quick else [0.4, 0.5, 0.6, 0.7]
    seeds = [0] if quick else list(range(6))
    repeats = 3 if quick else 9

    headline = []
    for n in headline_sizes:
        t_dy, t_dw, importance, t_fp = make_profile(n, seed=0)
        for rho in headline_rhos:
            args = (t_dy, t_dw, importance, budget_for(t_dy, t_dw, t_fp, rho))
            for res in headline_resolutions:
                headline.append({"n": n, "rho": rho, "resolution": res, "ms": median_ms(args, res, repeats)})

    sweep = []
    for n in sizes:
        for jitter in jitters:
            cases = []
            for seed in seeds:
                t_dy, t_dw, importance, t_fp = make_profile(n, seed, jitter)
                exact = exact_resolution(t_dy, t_dw)
                for rho in gap_rhos:
                    args = (t_dy, t_dw, importance, budget_for(t_dy, t_dw, t_fp, rho))
                    cases.append((args, objective(args, exact), exact))
            for res in resolutions:
                gaps = np.array([(best - objective(args, res)) / best for args, best, _ in cases])
                sweep.append({
                    "n": n, "jitter": jitter, "resolution": res, "ms": median_ms(cases[-1][0], res, repeats),
                    "mean_gap": float(gaps.mean()), "max_gap": float(gaps.max()),
                    "exact_fraction": float((gaps <= 1e-12).mean()),
                    "exact_resolution": max(exact for _, _, exact in cases),
                })  # fmt: skip

    payload = {
        "description": "solve_selection wall time (median, ms) and objective gap of each resolution on "
        "OPT-style block profiles; gaps are relative to the exact optimum, (optimum - objective) / optimum.",
        "quick": quick,
        "default_resolution": DEFAULT_RESOLUTION,
        "gap_rhos": gap_rhos,
        "jitters": jitters,
        "seeds": seeds,
        "headline": headline,
        "sweep": sweep,
    }
    table = ["## Time of one solve (median)", "", "| N | rho | resolution | ms |", "|---|---|---|---|"]
    table += [f"| {h['n']} | {h['rho']} | {h['resolution']:,} | {h['ms']:.1f} |" for h in headline]
    table += [
        "",
        f"## Sweep: time at rho={gap_rhos[-1]}; gap to the exact optimum, (optimum - objective) / optimum, over "
        f"rho in {gap_rhos} x {len(seeds)} seeds; jitter 0 = every tensor of a kind costs the same, as in a real "
        "profile",
        "",
        "| N | jitter | resolution | ms | mean gap | max gap | exact fraction | exact resolution |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {s['n']} | {s['jitter']} | {s['resolution']:,} | {s['ms']:.1f} | {s['mean_gap']:.2e} | "
        f"{s['max_gap']:.2e} | {s['exact_fraction']:.2f} | {s['exact_resolution']:,} |"
        for s in sweep
    ]
    return payload, "\n".join(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny subset that finishes in a few seconds")
    parser.add_argument("--results-dir", type=Path, default=None, help="where to write (default bench/results)")
    args = parser.parse_args()
    payload, table = run(args.quick)
    name = "selector_quick" if args.quick else "selector"
    paths = write_results(name, payload, table, command_line(), args.results_dir)
    print(table)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
