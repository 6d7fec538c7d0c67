"""Peak memory of one training step on the CPU: full fine-tuning, LoRA, top-k:2 and GreenTrainer at rho 0.4 to 0.7.

Usage: python bench/bench_memory.py [--quick] [--results-dir DIR] [--model smollm2] [--batch-size 8] [--seq-len 128]

Memory comes from torch's own accounting, not from the process's resident set: one training step (forward,
backward, clipping, AdamW; the optimizer's state already exists from a first step) runs under `torch.profiler` with
`profile_memory=True`, and the profiler's memory timeline (`export_memory_timeline`, every CPU allocation and free
of the step, each tensor categorised as parameter, optimizer state, gradient, activation, temporary...) gives the
peak of everything alive at once. The weights are the same for every scheme; the timeline sees only the ones the
step touches, so the peak is taken without its parameter category and the model's weight bytes are added once,
by hand. RSS readings on a CPU include the allocator's caching and freed-but-kept pages, which is why earlier RSS
figures were noisy (LoRA read 1.9 MB). GreenTrainer's selections come from the real method (profile, Taylor
importance on two probe batches, the DP); LoRA is the engine's `lora` scheme (q/v, r=8) on a fresh copy.
Writes bench/results/memory_<model>.{json,md} (memory_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import markdown_table, report, step_arguments  # noqa: E402

SCHEMES = ["full", "lora", "top-k:2", "green:0.4", "green:0.5", "green:0.7"]
TARGET_SCHEME, TARGET_RATIO = "green:0.5", 0.6
# columns of the profiler's coalesced timeline: a leading 0, then torch.profiler._memory_profiler's categories
COLUMNS = ["parameters", "optimizer state", "input", "temporary", "activations", "gradients", "autograd detail",
           "unknown"]


def step_peak(model, batch, trainable: list[str]) -> dict:
    """Train `trainable` for one step to create the optimizer's state, then profile a second step's memory."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from greencore.flops import model_loss

    params = dict(model.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in trainable)
        p.grad = None
    optimizer = torch.optim.AdamW([params[n] for n in trainable], lr=1e-5, weight_decay=0.01)

    def train_step() -> None:
        model_loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_([params[n] for n in trainable], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        train_step()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json.gz"
        prof.export_memory_timeline(str(path), device="cpu")
        times, sizes = json.loads(gzip.decompress(path.read_bytes()))
    rows = [dict(zip(COLUMNS, row[1:])) for row in sizes]
    without_weights = [sum(v for k, v in row.items() if k != "parameters") for row in rows]
    at = max(range(len(rows)), key=without_weights.__getitem__)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"peak_bytes": weights + without_weights[at], "weights_bytes": weights,
            "at_peak": {k: v for k, v in rows[at].items() if k != "parameters"},
            "max_during_step": {k: max(row[k] for row in rows) for k in COLUMNS if k != "parameters"},
            "trainable_params": int(sum(params[n].numel() for n in trainable))}


def run(model_name: str, batch_size: int, seq_len: int, schemes: list[str]) -> tuple[dict, str]:
    from greencore.data import sample_batches
    from greencore.importance import tensor_importance
    from greencore.models import load_model
    from greencore.profile import profile_model
    from greencore.schemes import parse_scheme
    from greencore.select import select_tensors
    from greencore.training import TrainConfig

    model, tokenizer = load_model(model_name, seed=0, device="cpu")
    model.train()
    batch, *probes = sample_batches(tokenizer, is_encoder_decoder=bool(model.config.is_encoder_decoder),
                                    batch_size=batch_size, seq_len=seq_len, count=3, seed=0)
    profile = profile_model(model, batch)
    importance = tensor_importance(model, probes, None, "taylor", profile=profile)
    results = []
    for label in schemes:
        scheme = parse_scheme(label)
        if scheme.uses_peft:  # adapters go on a fresh copy; the base model stays as it is for the others
            fresh, _ = load_model(model_name, seed=0, device="cpu")
            fresh.train()
            target = scheme.wrap(fresh, profile, TrainConfig(model=model_name, scheme=label, energy=False))
            trainable = [n for n, p in target.named_parameters() if p.requires_grad]
        elif scheme.reselects:
            target, trainable = model, select_tensors(profile, importance, scheme.rho).trainable
        else:
            target, trainable = model, scheme.trainable(profile)
        measured = step_peak(target, batch, trainable)
        results.append({"scheme": label, "tensors": len(trainable), **measured})
        print(f"{label}: peak {measured['peak_bytes'] / 2**20:.1f} MiB", flush=True)
    full = results[0]["peak_bytes"]
    for r in results:
        r["ratio_to_full"] = r["peak_bytes"] / full
    target = next((r for r in results if r["scheme"] == TARGET_SCHEME), None)
    payload = {"description": __doc__.split("\n\n")[1].replace("\n", " "), "model": model_name,
               "batch": [batch_size, seq_len], "results": results,
               "target": {"scheme": TARGET_SCHEME, "max_ratio": TARGET_RATIO,
                          "ratio": target["ratio_to_full"] if target else None,
                          "met": bool(target and target["ratio_to_full"] <= TARGET_RATIO)}}
    mib = 2**20
    header = ["scheme", "tensors trained", "trainable params", "peak (weights + the rest)", "ratio to full",
              "optimizer state", "gradients", "activations + temporary", "other", "gradients, most at any time"]
    rows = [[r["scheme"], r["tensors"], f"{r['trainable_params']:,}", f"{r['peak_bytes'] / mib:.1f} MiB",
             f"{r['ratio_to_full']:.3f}", f"{r['at_peak']['optimizer state'] / mib:.1f} MiB",
             f"{r['at_peak']['gradients'] / mib:.1f} MiB",
             f"{(r['at_peak']['activations'] + r['at_peak']['temporary']) / mib:.1f} MiB",
             f"{(r['at_peak']['input'] + r['at_peak']['autograd detail'] + r['at_peak']['unknown']) / mib:.1f} MiB",
             f"{r['max_during_step']['gradients'] / mib:.1f} MiB"]
            for r in results]
    t = payload["target"]
    table = (f"## {model_name}, one training step on {batch_size} x {seq_len} tokens (torch.profiler memory "
             f"timeline; weights {results[0]['weights_bytes'] / mib:.1f} MiB included in every peak)\n\n"
             + markdown_table(header, rows)
             + "\n\nThe breakdown columns are what was alive at the peak, by the profiler's categories (gradients "
               "are often none there: the peak falls early in the backward pass, when the activations are largest); "
               "the last column is the most gradient memory alive at any moment of the step.\n\n"
             + f"Target: {TARGET_SCHEME} peaks at most {TARGET_RATIO} of full fine-tuning's memory: "
             + ("not measured" if t["ratio"] is None else f"{'met' if t['met'] else 'NOT met'} ({t['ratio']:.3f})")
             + ".")
    return payload, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, quick="tiny-gpt2 on 2 x 64 tokens", quick_batch_size=2)
    parser.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated; the first is the reference")
    args = parser.parse_args(argv)
    quick = args.quick
    payload, table = run(args.model or ("tiny-gpt2" if quick else "smollm2"), args.batch_size or (2 if quick else 8),
                         args.seq_len or (64 if quick else 128), [s.strip() for s in args.schemes.split(",")])
    payload["quick"] = quick
    return report("memory_quick" if quick else f"memory_{payload['model']}", payload, table, args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
