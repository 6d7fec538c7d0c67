"""What one re-selection costs (probe batches, profile, DP) as a share of a training epoch.

Usage: python bench/bench_overhead.py [--quick] [--results-dir DIR] [--rho 0.5] [--timed-steps 4]

Settings are the quality benchmark's (bench/bench_quality.py `settings_for`: FULL, smollm2 on stdlib-tldr by
default, its training subset, batch size, lengths and probe batches; QUICK with --quick). The parts of a selection are timed and counted as the
engine runs them: profiling one batch (its real forward pass is the only FLOPs; the backward is replayed on the meta
device), Taylor importance on the probe batches (forward and backward, under FlopCounterMode) and the DP.
The epoch is the engine's first epoch: the same shuffled, length-bucketed batches. Its FLOPs are measured per distinct
batch shape with FlopCounterMode for full fine-tuning and for the selection, and its time is the mean measured step
time over a few of its batches (forward, backward, clipping, AdamW) times the steps per epoch.
Writes bench/results/overhead_<model>.{json,md} (overhead_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_quality import results_name, settings_for  # noqa: E402
from bench.bench_speed import step  # noqa: E402
from bench.common import contention_note, markdown_table, report, timing_context  # noqa: E402


def run(settings: dict, rho: float, timed_steps: int, seed: int = 0) -> tuple[dict, str]:
    import torch

    from greencore.data import batches, collate, encode_examples, load_summarization, pad_batch
    from greencore.training.setup import PAD_MULTIPLE
    from greencore.flops import flop_counter, measure_training_flops
    from greencore.importance import tensor_importance
    from greencore.models import load_model
    from greencore.profile import profile_model
    from greencore.select import select_tensors

    context = timing_context()
    torch.manual_seed(seed)
    model, tokenizer = load_model(settings["model"], seed=seed, device="cpu")
    model.train()
    data = load_summarization(settings["dataset"], max_examples={"train": settings["max_train_examples"]})
    rows, _ = encode_examples(tokenizer, data["train"], is_encoder_decoder=bool(model.config.is_encoder_decoder),
                              max_source_tokens=settings["max_source_tokens"],
                              max_target_tokens=settings["max_target_tokens"])
    bs = settings["batch_size"]
    steps_per_epoch = len(rows) // bs

    started = time.perf_counter()
    profile = profile_model(model, pad_batch(tokenizer, collate(tokenizer, rows[:bs]), PAD_MULTIPLE))
    profile_seconds = time.perf_counter() - started
    profile_flops = profile.t_fp  # the only real compute: one forward pass (the engine charges exactly this)

    # the quality benchmark picks each scheme's rate by a grid; the rate scales every Taylor score alike, so it
    # changes neither the selection nor what a selection costs
    optimizer = torch.optim.AdamW([dict(model.named_parameters())[n] for n in profile.names],
                                  lr=settings.get("lr") or 1e-4, weight_decay=settings["weight_decay"])
    order = batches(tokenizer, rows, batch_size=bs, shuffle=True, seed=seed * 7_919 + 1, drop_last=True)
    probes = [pad_batch(tokenizer, b, PAD_MULTIPLE) for _, b in zip(range(settings["probe_batches"]), order)]
    started = time.perf_counter()
    with flop_counter() as counter:
        importance = tensor_importance(model, probes, optimizer, settings["metric"], profile=profile, seed=seed,
                                       rho=rho)  # as the engine probes: only tensors within rho's reach
    importance_seconds = time.perf_counter() - started
    importance_flops = counter.get_total_flops()
    started = time.perf_counter()
    selection = select_tensors(profile, importance, rho)
    dp_seconds = time.perf_counter() - started

    epoch = [pad_batch(tokenizer, b, PAD_MULTIPLE) for b in batches(tokenizer, rows, batch_size=bs, shuffle=True,
                                                            seed=seed * 1_000_003, drop_last=True)]
    shapes: dict[tuple, dict] = {}
    for b in epoch:
        key = tuple((k, tuple(v.shape)) for k, v in sorted(b.items()))
        if key not in shapes:
            shapes[key] = {"count": 0,
                           "full": measure_training_flops(model, b, profile.names)["total"],
                           "green": measure_training_flops(model, b, selection.trainable)["total"]}
        shapes[key]["count"] += 1
    epoch_flops = {kind: float(sum(s["count"] * s[kind] for s in shapes.values())) for kind in ("full", "green")}

    params = [dict(model.named_parameters())[n] for n in profile.names]
    sample = np.random.default_rng(seed).choice(len(epoch), size=min(timed_steps, len(epoch)), replace=False)
    step_seconds: dict[str, list[float]] = {"full": [], "green": []}
    wanted = {"full": set(profile.names), "green": set(selection.trainable)}
    for i in [int(sample[0])] + [int(i) for i in sample]:  # the first step is a warm-up
        for kind in ("full", "green"):
            for n, p in zip(profile.names, params):
                p.requires_grad_(n in wanted[kind])
                p.grad = None
            forward, backward = step(model, epoch[i], params, optimizer)
            step_seconds[kind].append(forward + backward)
    step_seconds = {k: v[1:] for k, v in step_seconds.items()}
    epoch_seconds = {k: float(np.mean(v)) * steps_per_epoch for k, v in step_seconds.items()}

    reselect_flops = importance_flops  # the engine profiles once per run and re-selects with probes + DP
    reselect_seconds = importance_seconds + dp_seconds
    with_profile_flops = reselect_flops + profile_flops
    with_profile_seconds = reselect_seconds + profile_seconds
    end = timing_context()
    result = {
        "settings": settings, "rho": rho, "steps_per_epoch": steps_per_epoch, "distinct_shapes": len(shapes),
        "selected_tensors": len(selection.trainable), "predicted_ratio": selection.predicted_ratio,
        "parts": {
            "profile": {"seconds": profile_seconds, "flops": profile_flops},
            "importance": {"seconds": importance_seconds, "flops": importance_flops,
                           "probe_batches": settings["probe_batches"]},
            "dp": {"seconds": dp_seconds, "flops": 0},
        },
        "epoch": {"flops_full": epoch_flops["full"], "flops_green": epoch_flops["green"],
                  "seconds_full": epoch_seconds["full"], "seconds_green": epoch_seconds["green"],
                  "measured_ratio": epoch_flops["green"] / epoch_flops["full"],
                  "step_seconds_full": step_seconds["full"], "step_seconds_green": step_seconds["green"]},
        "reselection": {"seconds": reselect_seconds, "flops": reselect_flops,
                        "flops_share_of_full_epoch": reselect_flops / epoch_flops["full"],
                        "flops_share_of_green_epoch": reselect_flops / epoch_flops["green"],
                        "time_share_of_full_epoch": reselect_seconds / epoch_seconds["full"],
                        "time_share_of_green_epoch": reselect_seconds / epoch_seconds["green"]},
        "reselection_with_profile": {
            "seconds": with_profile_seconds, "flops": with_profile_flops,
            "flops_share_of_full_epoch": with_profile_flops / epoch_flops["full"],
            "flops_share_of_green_epoch": with_profile_flops / epoch_flops["green"],
            "time_share_of_full_epoch": with_profile_seconds / epoch_seconds["full"],
            "time_share_of_green_epoch": with_profile_seconds / epoch_seconds["green"]},
        "timing": {"context_at_start": context, "context_at_end": end, "note": contention_note(context, end)},
    }
    from greencore.plots import format_flops

    part_rows = [[name, f"{p['seconds']:.2f} s", format_flops(p["flops"])] for name, p in result["parts"].items()]
    share_rows = []
    for label, key in (("probes + DP (what the engine repeats each interval)", "reselection"),
                       ("probes + profile + DP", "reselection_with_profile")):
        r = result[key]
        share_rows.append([label, f"{r['seconds']:.2f} s", format_flops(r["flops"]),
                           f"{r['flops_share_of_full_epoch']:.2%}", f"{r['flops_share_of_green_epoch']:.2%}",
                           f"{r['time_share_of_full_epoch']:.2%}", f"{r['time_share_of_green_epoch']:.2%}"])
    e = result["epoch"]
    table = "\n".join([
        f"## {settings['model']} on {settings['dataset']}: {steps_per_epoch} steps of {bs} per epoch "
        f"({len(shapes)} batch shapes), green rho={rho} trains {len(selection.trainable)} tensors",
        "", markdown_table(["part", "time", "FLOPs"], part_rows), "",
        f"Epoch: full fine-tuning {format_flops(e['flops_full'])} in ~{e['seconds_full']:.0f} s; green "
        f"{format_flops(e['flops_green'])} (measured ratio {e['measured_ratio']:.3f}) in ~{e['seconds_green']:.0f} s "
        f"(mean of {len(e['step_seconds_full'])} timed steps x {steps_per_epoch}).", "",
        markdown_table(["one selection", "time", "FLOPs", "FLOPs / full epoch", "FLOPs / green epoch",
                        "time / full epoch", "time / green epoch"], share_rows),
        "", f"Machine load: {result['timing']['note']}"])
    return result, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quality benchmark's --quick settings (tiny-gpt2)")
    parser.add_argument("--results-dir", type=Path, default=None, help="where to write (default bench/results)")
    parser.add_argument("--rho", type=float, default=0.5)
    parser.add_argument("--timed-steps", type=int, default=None, help="steps timed per scheme (default 4; 2 quick)")
    parser.add_argument("--model", default=None, help="override the quality benchmark's model")
    args = parser.parse_args(argv)
    settings = settings_for(args.model, args.quick)
    payload, table = run(settings, args.rho, args.timed_steps or (2 if args.quick else 4))
    payload["quick"] = args.quick
    return report(results_name("overhead", args.quick, settings), payload, table, args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
