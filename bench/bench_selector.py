"""Speed and near-exactness of `solve_selection` on realistic transformer-shaped profiles, and the exact DP against
simple heuristics on real profiles and importances.

Usage: python bench/bench_selector.py [--quick] [--results-dir DIR] [--skip-real]

Profiles repeat an OPT-style block in backprop order (16 tensors: MLP fc1/fc2 weights 4x the q/k/v/o weights,
norms and biases with t_dw = 0, t_dy of a weight about its t_dw, attention adding to the t_dy of o), with a few
percent of random jitter and random positive and negative importances. The gap of each resolution is measured against
the exact optimum: costs are whole multiples of a small quantum, so solving with one bucket per quantum (about
100 buckets per d x d matmul, 50,000 to 200,000 in all) is exact.

Real profiles (section "DP against heuristics"): each built-in model is profiled on a stdlib-tldr batch, Taylor
importance (fresh AdamW) is averaged over two more batches, and at each rho the DP (`select_tensors`) is compared,
under the very same chain cost model and budget, with
- greedy: repeatedly add the tensor with the highest importance per FLOP of *marginal* chain cost (its t_dw plus any
  activation gradient its depth adds) among those that still fit;
- greedy-static: tensors by importance / (t_dw + activation-gradient prefix down to it), added while they fit;
- top-k: the last k blocks (plus final norm and untied head; `greencore.schemes`) at the largest k that fits, scored
  by the positive importances it contains (0 when not even one block fits).
Objectives are sums of importance; the share is of the total positive importance.
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

from bench.common import contention_note, report, timing_context  # noqa: E402
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


REAL_MODELS = ["minilm", "minilm-seq2seq", "tiny-opt", "tiny-bloom", "tiny-gpt2", "tiny-llama", "tiny-t5"]
QUICK_REAL_MODELS = ["tiny-gpt2", "tiny-t5"]
REAL_RHOS = [0.4, 0.5, 0.6, 0.7]


def greedy_marginal(profile, importance: np.ndarray, budget: float) -> np.ndarray:
    """Add, while anything fits, the tensor with the most importance per FLOP of marginal chain cost."""
    dy_prefix = np.concatenate(([0.0], np.cumsum(profile.t_dy)))
    mask = np.zeros(len(profile), dtype=bool)
    dw, deepest = 0.0, 0
    while True:
        free = ~mask & (importance > 0)
        if not free.any():
            return mask
        reach = np.maximum(deepest, profile.reach)
        cost = dw + profile.t_dw + dy_prefix[reach]
        current = dw + dy_prefix[deepest] if mask.any() else 0.0
        fits = free & (cost <= budget)
        if not fits.any():
            return mask
        marginal = np.maximum(cost - current, 0.0)
        score = np.where(marginal > 0, importance / np.where(marginal > 0, marginal, 1.0), np.inf)
        score = np.where(fits, score, -np.inf)
        best = np.flatnonzero(score == score.max())
        k = int(best[np.argmax(importance[best])])
        mask[k] = True
        dw += profile.t_dw[k]
        deepest = max(deepest, int(profile.reach[k]))


def greedy_static(profile, importance: np.ndarray, budget: float) -> np.ndarray:
    """Tensors by importance / (own t_dw + activation-gradient prefix to its reach), each added if it still fits."""
    dy_prefix = np.concatenate(([0.0], np.cumsum(profile.t_dy)))
    alone = profile.t_dw + dy_prefix[profile.reach]
    ratio = np.where(alone > 0, importance / np.where(alone > 0, alone, 1.0), np.inf)
    mask = np.zeros(len(profile), dtype=bool)
    for k in np.argsort(-ratio, kind="stable"):
        if importance[k] <= 0:
            continue
        mask[k] = True
        if profile.chain_cost(mask) > budget:
            mask[k] = False
    return mask


def top_k_fit(profile, importance: np.ndarray, budget: float) -> tuple[int, np.ndarray]:
    """The largest k whose top-k set fits the budget, and its mask restricted to positive importances."""
    from greencore.schemes import parse_scheme

    best_k, best = 0, np.zeros(len(profile), dtype=bool)
    for k in range(1, len(profile) + 1):
        try:
            mask = profile.as_mask(parse_scheme(f"top-k:{k}").trainable(profile))
        except ValueError:  # more blocks than the model has
            break
        mask &= importance > 0
        if profile.chain_cost(mask) > budget:
            break
        best_k, best = k, mask
    return best_k, best


def real_profiles(quick: bool) -> list[dict]:
    """The DP against the heuristics on profiles and Taylor importances of the built-in models."""
    from greencore.data import sample_batches
    from greencore.importance import tensor_importance
    from greencore.models import load_model
    from greencore.profile import profile_model
    from greencore.select import select_tensors

    models = QUICK_REAL_MODELS if quick else REAL_MODELS
    batch_size, seq_len = (4, 64) if quick else (8, 128)
    out = []
    for name in models:
        model, tokenizer = load_model(name, seed=0, device="cpu")
        model.train()
        data = sample_batches(tokenizer, is_encoder_decoder=bool(model.config.is_encoder_decoder),
                              batch_size=batch_size, seq_len=seq_len, count=3, seed=0)
        profile = profile_model(model, data[0])
        importance = tensor_importance(model, data[1:], None, "taylor", profile=profile)
        positive = float(importance[importance > 0].sum())
        full = profile.full_flops
        for rho in REAL_RHOS:
            if rho < profile.min_training_rho:
                continue
            budget = rho * full - profile.t_fp
            started = time.perf_counter()
            selection = select_tensors(profile, importance, rho)
            dp_ms = (time.perf_counter() - started) * 1e3
            fine = select_tensors(profile, importance, rho, resolution=10 * DEFAULT_RESOLUTION)
            k, topk = top_k_fit(profile, importance, budget)
            masks = {"dp": selection.mask, "greedy": greedy_marginal(profile, importance, budget),
                     "greedy_static": greedy_static(profile, importance, budget), "top_k": topk}
            entry = {"model": name, "tensors": len(profile), "rho": rho, "positive_importance": positive,
                     "dp_ms": dp_ms, "dp_fine_objective": float(importance[fine.mask].sum()), "top_k_k": k}
            for method, mask in masks.items():
                assert profile.chain_cost(mask) <= budget * (1 + 1e-12), (name, rho, method)
                entry[method] = {"objective": float(importance[mask].sum()), "tensors": int(mask.sum()),
                                 "chain_ratio": (profile.t_fp + profile.chain_cost(mask)) / full}
            entry["dp_at_least_heuristics"] = all(
                entry["dp"]["objective"] >= entry[m]["objective"] for m in ("greedy", "greedy_static", "top_k"))
            out.append(entry)
        print(f"{name}: " + ", ".join(
            f"rho {e['rho']}: dp {e['dp']['objective']:.3g} greedy {e['greedy']['objective']:.3g} "
            f"top-{e['top_k_k']} {e['top_k']['objective']:.3g}" for e in out if e["model"] == name), flush=True)
    return out


def real_table(entries: list[dict]) -> str:
    def share(e: dict, method: str) -> str:
        value = e[method]["objective"]
        pct = f"{value / e['positive_importance']:.1%}" if e["positive_importance"] > 0 else "-"
        return f"{pct} ({e[method]['tensors']})"

    rows = [[e["model"], e["tensors"], e["rho"], share(e, "dp"), f"{e['dp']['chain_ratio']:.3f}",
             share(e, "greedy"), share(e, "greedy_static"), f"k={e['top_k_k']}: {share(e, 'top_k')}",
             f"{e['dp']['objective'] / e['greedy']['objective']:.3f}" if e["greedy"]["objective"] > 0 else "-",
             f"{e['dp_ms']:.1f}", "yes" if e["dp_at_least_heuristics"] else "NO"] for e in entries]
    return "\n".join([
        "## DP against heuristics on real profiles and Taylor importances (stdlib-tldr batches)", "",
        "Share of the total positive importance each method captures under the same chain cost model and budget "
        "(tensors chosen in brackets); chain ratio = (t_fp + chain cost) / full step.", "",
        "| model | tensors | rho | DP | DP chain ratio | greedy (marginal) | greedy (static) | top-k | DP / greedy | "
        "DP ms | DP >= all |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny subset that finishes in a few seconds")
    parser.add_argument("--results-dir", type=Path, default=None, help="where to write (default bench/results)")
    parser.add_argument("--skip-real", action="store_true", help="synthetic profiles only (no model is loaded)")
    args = parser.parse_args(argv)
    context = timing_context()
    payload, table = run(args.quick)
    if not args.skip_real:
        payload["real_profiles"] = real_profiles(args.quick)
        payload["real_dp_at_least_heuristics"] = all(e["dp_at_least_heuristics"] for e in payload["real_profiles"])
        table += "\n\n" + real_table(payload["real_profiles"])
    end = timing_context()
    payload["timing"] = {"context_at_start": context, "context_at_end": end, "note": contention_note(context, end)}
    table += f"\n\nMachine load: {payload['timing']['note']}"
    name = "selector_quick" if args.quick else "selector"
    return report(name, payload, table, args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
