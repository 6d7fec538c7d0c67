"""How well the profile predicts a selection's FLOPs: predicted against measured, per architecture.

Usage: python bench/bench_flops_model.py [--quick] [--results-dir DIR] [--masks N]

For each built-in architecture, one real stdlib-tldr batch is profiled (`greencore.profile_model`), and for random
selections (each tensor kept with a probability drawn per mask from U(0.02, 0.98)), the single-tensor selections of
the tensor nearest the loss and of the deepest tensor, and the full selection, the predicted step
`t_fp + profile.backward_flops(mask)` is compared with `measure_training_flops` (FlopCounterMode on a real forward and
backward with exactly those tensors trainable). Also reported: the chain model `t_fp + profile.chain_cost(mask)` that
the selector optimises, which charges every activation gradient down to the deepest selected tensor and so should
over-estimate (never under-estimate) the measurement.

A second table shows what the training loss changes: each model is profiled on a training-shaped batch (8 x 128 tokens)
with greencore's loss (a causal LM's head only at the scored positions) and with the model's own loss (the head at every
position, as `transformers` computes it): the full step's FLOPs, and the smallest rho whose budget pays the activation
gradient into a transformer block at all (`(t_fp + sum of t_dy before the first block tensor) / full step`).
Writes bench/results/flops_model.{json,md} (flops_model_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import markdown_table, median, report  # noqa: E402
from greencore.plots import format_flops  # noqa: E402

MODELS = ["tiny-opt", "tiny-bloom", "tiny-gpt2", "tiny-llama", "tiny-t5", "minilm", "minilm-seq2seq"]
QUICK_MODELS = ["tiny-opt", "tiny-bloom", "tiny-gpt2", "tiny-llama", "tiny-t5"]


def masks_for(n: int, count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """`count` random masks of varying density plus the first-only, last-only and full masks."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        density = rng.uniform(0.02, 0.98)
        mask = rng.random(n) < density
        if not mask.any():
            mask[rng.integers(n)] = True
        out.append((f"random-{i}", mask))
    first, last = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    first[0], last[-1] = True, True
    out += [("first-only", first), ("last-only", last), ("all", np.ones(n, dtype=bool))]
    return out


def bench_model(name: str, batch_size: int, seq_len: int, count: int, seed: int) -> dict:
    import torch

    from greencore.data import sample_batches
    from greencore.flops import measure_training_flops
    from greencore.models import load_model
    from greencore.profile import profile_model

    torch.manual_seed(seed)
    model, tokenizer = load_model(name, seed=seed, device="cpu")
    model.train()
    batch = sample_batches(tokenizer, is_encoder_decoder=bool(model.config.is_encoder_decoder),
                           batch_size=batch_size, seq_len=seq_len, count=1, seed=seed)[0]
    started = time.perf_counter()
    profile = profile_model(model, batch)
    profile_seconds = time.perf_counter() - started
    cases = []
    for label, mask in masks_for(len(profile), count, seed):
        predicted = profile.t_fp + profile.backward_flops(mask)
        chain = profile.t_fp + profile.chain_cost(mask)
        measured = measure_training_flops(model, batch, mask, names=profile.names)
        cases.append({
            "mask": label, "selected": int(mask.sum()), "predicted": float(predicted), "chain": float(chain),
            "measured": measured["total"], "measured_backward": measured["backward"],
            "rel_error": abs(predicted - measured["total"]) / measured["total"],
            "rel_error_backward": (abs(predicted - profile.t_fp - measured["backward"]) / measured["backward"]
                                   if measured["backward"] else 0.0),
            "chain_over": chain / measured["total"] - 1,
        })
    errors = [c["rel_error"] for c in cases]
    backward_errors = [c["rel_error_backward"] for c in cases]
    over = [c["chain_over"] for c in cases]
    return {
        "model": name, "tensors": len(profile), "batch": [batch_size, seq_len],
        "t_fp": profile.t_fp, "full_flops": profile.full_flops, "min_rho": profile.min_rho,
        "profile_seconds": profile_seconds, "masks": len(cases),
        "median_rel_error": median(errors), "max_rel_error": max(errors),
        "median_rel_error_backward": median(backward_errors), "max_rel_error_backward": max(backward_errors),
        "chain_over_median": median(over), "chain_over_max": max(over), "chain_over_min": min(over),
        "exact_fraction": float(np.mean([c["predicted"] == c["measured"] for c in cases])),
        "cases": cases,
    }


def head_costs(name: str, batch_size: int, seq_len: int, seed: int) -> dict:
    """Full-step FLOPs and the budget that reaches the first block, with greencore's loss and the model's own."""
    import torch

    from greencore.data import sample_batches
    from greencore.flops import model_loss, own_loss, scored_positions
    from greencore.models import load_model
    from greencore.profile import profile_model

    torch.manual_seed(seed)
    model, tokenizer = load_model(name, seed=seed, device="cpu")
    model.train()
    batch = sample_batches(tokenizer, is_encoder_decoder=bool(model.config.is_encoder_decoder),
                           batch_size=batch_size, seq_len=seq_len, count=1, seed=seed)[0]
    out = {"model": name, "batch": [batch_size, seq_len], "scored_positions": scored_positions(model, batch),
           "label_tokens": int((batch["labels"] != -100).sum())}
    for key, loss_fn in (("greencore_loss", model_loss), ("own_loss", own_loss)):
        profile = profile_model(model, batch, loss_fn=loss_fn)
        first_block = min(k for k, lay in enumerate(profile.layout) if lay.block is not None)
        out[key] = {"t_fp": profile.t_fp, "full_flops": profile.full_flops, "min_rho": profile.min_rho,
                    "rho_to_reach_a_block": (profile.t_fp + profile.t_dy[:first_block].sum()) / profile.full_flops}
    return out


def run(quick: bool, count: int | None = None, models: list[str] | None = None) -> tuple[dict, str]:
    models = models or (QUICK_MODELS if quick else MODELS)
    count = count or (10 if quick else 20)
    batch_size, seq_len = 2, 64
    results = []
    for name in models:
        started = time.perf_counter()
        result = bench_model(name, batch_size, seq_len, count, seed=0)
        result["seconds"] = time.perf_counter() - started
        results.append(result)
        print(f"{name}: median error {result['median_rel_error']:.2e}, max {result['max_rel_error']:.2e}, chain "
              f"over-estimate median {result['chain_over_median']:.1%} max {result['chain_over_max']:.1%} "
              f"({result['seconds']:.0f} s)", flush=True)
    train_shape = (2, 64) if quick else (8, 128)
    heads = [head_costs(name, *train_shape, seed=0) for name in models]
    payload = {
        "description": "Relative error |predicted - measured| / measured of a training step's FLOPs, where "
                       "predicted = t_fp + profile.backward_flops(mask) and measured = measure_training_flops "
                       "(FlopCounterMode), over random selections plus the first-only, last-only and full ones; "
                       "chain_over = (t_fp + chain_cost(mask)) / measured - 1, the selector's cost model.",
        "quick": quick, "random_masks": count, "batch": [batch_size, seq_len], "models": results,
        "max_rel_error": max(r["max_rel_error"] for r in results),
        "head_costs": heads,
    }
    header = ["model", "tensors", "masks", "exact matches", "median error", "max error", "max error (backward only)",
              "chain over-estimate median", "chain max", "chain min", "min rho"]
    rows = [[r["model"], r["tensors"], r["masks"], f"{r['exact_fraction']:.0%}", f"{r['median_rel_error']:.2e}",
             f"{r['max_rel_error']:.2e}", f"{r['max_rel_error_backward']:.2e}", f"{r['chain_over_median']:.1%}",
             f"{r['chain_over_max']:.1%}", f"{r['chain_over_min']:.1%}", f"{r['min_rho']:.3f}"] for r in results]
    table = (f"## Predicted vs measured step FLOPs (batch {batch_size} x {seq_len} tokens of stdlib-tldr, "
             f"{count} random masks + first-only, last-only, all)\n\n" + markdown_table(header, rows))
    header = ["model", "label tokens", "head positions (greencore loss)", "full step, own loss",
              "full step, greencore loss", "saved", "rho to reach a block, own loss",
              "rho to reach a block, greencore loss"]
    rows = [[h["model"], h["label_tokens"],
             h["scored_positions"] or "all decoder positions (own loss)",
             format_flops(h["own_loss"]["full_flops"]), format_flops(h["greencore_loss"]["full_flops"]),
             f"{1 - h['greencore_loss']['full_flops'] / h['own_loss']['full_flops']:.1%}",
             f"{h['own_loss']['rho_to_reach_a_block']:.3f}", f"{h['greencore_loss']['rho_to_reach_a_block']:.3f}"]
            for h in heads]
    table += (f"\n\n## The output head and the budget (one stdlib-tldr batch of {train_shape[0]} x {train_shape[1]} "
              f"tokens)\n\n" + markdown_table(header, rows))
    return payload, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only, short batches")
    parser.add_argument("--results-dir", type=Path, default=None, help="where to write (default bench/results)")
    parser.add_argument("--masks", type=int, default=None, help="random masks per model (default 20; 10 with --quick)")
    parser.add_argument("--models", default=None, help=f"comma-separated (default {','.join(MODELS)})")
    args = parser.parse_args(argv)
    payload, table = run(args.quick, args.masks, args.models.split(",") if args.models else None)
    name = "flops_model_quick" if args.quick else "flops_model"
    return report(name, payload, table, args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
