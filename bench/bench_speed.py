"""Wall-clock time of one training step on the CPU: full fine-tuning against GreenTrainer at rho 0.4 to 0.9.

Usage: python bench/bench_speed.py [--quick] [--results-dir DIR] [--model smollm2] [--batch-size 8] [--seq-len 128]
                                   [--repeats 7]

One process, one model, the same stdlib-tldr batches for every configuration. GreenTrainer's selections come from
the real method (profile on the first batch, Taylor importance on two probe batches, the DP at each rho). Then, round
after round, every configuration runs one training step (forward, backward, gradient clipping and AdamW, exactly as
the engine does), in an order rotated each round so none is always first; the first round is a warm-up. Reported per
configuration: median step time, its ratio to full fine-tuning (median of the per-round ratios, so slow phases of a
shared machine cancel), the forward and backward+update parts, and next to them the predicted FLOPs ratio (the
profile's) and the measured one (FlopCounterMode on the same batch).
Writes bench/results/speed_<model>.{json,md} (speed_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import contention_note, markdown_table, median, report, step_arguments, timing_context  # noqa: E402

RHOS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
TARGET_RHO, TARGET_TIME_RATIO = 0.5, 0.6
MAX_TIME_OVER_FLOPS = 1.1  # every green step's time ratio at most this many times its measured FLOPs ratio


def step(model, batch, params, optimizer, max_grad_norm: float = 1.0) -> tuple[float, float]:
    """One training step as the engine runs it; returns (forward seconds, backward + update seconds)."""
    import torch

    from greencore.flops import model_loss

    started = time.perf_counter()
    loss = model_loss(model, batch)
    middle = time.perf_counter()
    if loss.requires_grad:
        loss.backward()
    trained = [p for p in params if p.grad is not None]
    if trained:
        torch.nn.utils.clip_grad_norm_(trained, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return middle - started, time.perf_counter() - middle


def seq2seq_batches(tokenizer, batch_size: int, seq_len: int, count: int, target_len: int = 32) -> list[dict]:
    """Encoder-decoder batches shaped like training ones: sources padded/cut to seq_len, summaries padded to
    target_len (`sample_batches` pads summaries to seq_len too, which would make the decoder as long as the encoder)."""
    import torch

    from greencore.data import IGNORE_INDEX, collate, encode_examples, load_summarization, pad_token_id

    data = load_summarization("stdlib-tldr")["train"]
    rows, _ = encode_examples(tokenizer, data.select(range(8 * batch_size * count)), is_encoder_decoder=True,
                              max_source_tokens=seq_len, max_target_tokens=target_len)
    out = []
    for i in range(count):
        b = collate(tokenizer, rows[i * batch_size:(i + 1) * batch_size])
        pad = {"input_ids": pad_token_id(tokenizer), "attention_mask": 0, "labels": IGNORE_INDEX}
        width = {"input_ids": seq_len, "attention_mask": seq_len, "labels": target_len}
        out.append({k: torch.nn.functional.pad(v, (0, width[k] - v.shape[1]), value=pad[k]) for k, v in b.items()})
    return out


def run(model_name: str, batch_size: int, seq_len: int, rhos: list[float], repeats: int, n_batches: int,
        probe_batches: int) -> tuple[dict, str]:
    import torch

    from greencore.data import sample_batches
    from greencore.flops import measure_training_flops
    from greencore.importance import tensor_importance
    from greencore.models import load_model
    from greencore.profile import profile_model
    from greencore.select import select_tensors

    context = timing_context()
    model, tokenizer = load_model(model_name, seed=0, device="cpu")
    model.train()
    if model.config.is_encoder_decoder:  # sources of seq_len tokens, summaries of at most 32 (as in training)
        data = seq2seq_batches(tokenizer, batch_size, seq_len, n_batches + probe_batches)
    else:
        data = sample_batches(tokenizer, is_encoder_decoder=False, batch_size=batch_size, seq_len=seq_len,
                              count=n_batches + probe_batches, seed=0)
    batches, probes = data[:n_batches], data[n_batches:]
    profile = profile_model(model, batches[0])
    importance = tensor_importance(model, probes, None, "taylor", profile=profile)
    configs: list[tuple[str, np.ndarray, float | None]] = [("full", np.ones(len(profile), dtype=bool), 1.0)]
    for rho in rhos:
        if rho < profile.min_training_rho:
            continue
        selection = select_tensors(profile, importance, rho)
        configs.append((f"green:{rho:g}", selection.mask, rho))

    params = dict(model.named_parameters())
    tensors = [params[n] for n in profile.names]
    optimizer = torch.optim.AdamW(tensors, lr=1e-5, weight_decay=0.01)
    full_measured = measure_training_flops(model, batches[0], profile.names)["total"]
    results = []
    for label, mask, rho in configs:
        measured = measure_training_flops(model, batches[0], mask, names=profile.names)["total"]
        results.append({
            "config": label, "rho": rho, "selected_tensors": int(mask.sum()),
            "trainable_params": int(sum(t.numel() for t, m in zip(tensors, mask) if m)),
            "predicted_ratio": profile.step_flops(mask) / profile.full_flops,
            "measured_ratio": measured / full_measured, "forward": [], "backward": [], "total": []})

    def use(mask: np.ndarray) -> None:
        for t, m in zip(tensors, mask):
            t.requires_grad_(bool(m))
            t.grad = None

    for round_index in range(repeats + 1):  # round 0 is a warm-up (allocations, optimizer state)
        shift = round_index % len(configs)
        batch = batches[round_index % len(batches)]
        for i in list(range(shift, len(configs))) + list(range(shift)):
            label, mask, _ = configs[i]
            use(mask)
            forward, backward = step(model, batch, tensors, optimizer)
            if round_index:
                results[i]["forward"].append(forward)
                results[i]["backward"].append(backward)
                results[i]["total"].append(forward + backward)
        print(f"round {round_index}/{repeats}: " + ", ".join(f"{r['config']} {r['total'][-1]:.2f}s" for r in results
                                                             if r["total"]), flush=True)
    use(np.ones(len(profile), dtype=bool))
    full = results[0]
    for r in results:
        r["median_seconds"] = median(r["total"])
        r["median_forward"] = median(r["forward"])
        r["median_backward"] = median(r["backward"])
        r["time_ratio"] = median([t / f for t, f in zip(r["total"], full["total"])])
        r["time_ratio_of_medians"] = r["median_seconds"] / full["median_seconds"]
    at_target = [r for r in results if r["rho"] == TARGET_RHO]
    green = [r for r in results if r["config"] != "full"]
    for r in green:
        r["time_over_flops"] = r["time_ratio"] / r["measured_ratio"]
    worst = max(green, key=lambda r: r["time_over_flops"]) if green else None
    end = timing_context()
    payload = {
        "description": "Seconds per training step (forward, backward, clipping, AdamW) for full fine-tuning and "
                       "GreenTrainer selections, same process and batches, alternating; time_ratio is the median "
                       "over rounds of (step time / full step time in the same round).",
        "model": model_name, "batch": [batch_size, seq_len], "repeats": repeats, "batches": n_batches,
        "min_rho": profile.min_rho, "results": results,
        "target": {"rho": TARGET_RHO, "max_time_ratio": TARGET_TIME_RATIO,
                   "time_ratio": at_target[0]["time_ratio"] if at_target else None,
                   "met": bool(at_target and at_target[0]["time_ratio"] <= TARGET_TIME_RATIO)},
        "proportional": {"max_time_over_flops": MAX_TIME_OVER_FLOPS,
                         "worst": None if worst is None else {"config": worst["config"],
                                                              "time_over_flops": worst["time_over_flops"]},
                         "met": bool(worst and worst["time_over_flops"] <= MAX_TIME_OVER_FLOPS)},
        "timing": {"context_at_start": context, "context_at_end": end, "note": contention_note(context, end)},
    }
    header = ["config", "tensors trained", "trainable params", "predicted FLOPs ratio", "measured FLOPs ratio",
              "median step", "forward", "backward + update", "time ratio to full", "time ratio / FLOPs ratio"]
    rows = [[r["config"], r["selected_tensors"], f"{r['trainable_params']:,}", f"{r['predicted_ratio']:.3f}",
             f"{r['measured_ratio']:.3f}", f"{r['median_seconds']:.3f} s", f"{r['median_forward']:.3f} s",
             f"{r['median_backward']:.3f} s", f"{r['time_ratio']:.3f}",
             f"{r['time_over_flops']:.3f}" if "time_over_flops" in r else "-"] for r in results]
    target = payload["target"]
    table = (f"## {model_name}, batch {batch_size} x {seq_len} tokens, {repeats} rounds after a warm-up\n\n"
             + markdown_table(header, rows)
             + f"\n\nTarget: at rho={TARGET_RHO} a step takes at most {TARGET_TIME_RATIO} of full fine-tuning's time: "
             + ("not measured" if target["time_ratio"] is None else
                f"{'met' if target['met'] else 'NOT met'} ({target['time_ratio']:.3f})")
             + f".\n\nTarget: every green step's time ratio at most {MAX_TIME_OVER_FLOPS} x its measured FLOPs ratio: "
             + ("not measured" if worst is None else
                f"{'met' if payload['proportional']['met'] else 'NOT met'} (worst {worst['config']}, "
                f"{worst['time_over_flops']:.3f})")
             + f".\n\nMachine load: {payload['timing']['note']}")
    return payload, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, quick="tiny-gpt2, short batches, 2 rounds", quick_batch_size=4)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; 2 with --quick)")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches cycled over the rounds")
    parser.add_argument("--rhos", default=",".join(map(str, RHOS)), help="comma-separated rho values")
    args = parser.parse_args(argv)
    quick = args.quick
    payload, table = run(
        args.model or ("tiny-gpt2" if quick else "smollm2"), args.batch_size or (4 if quick else 8),
        args.seq_len or (64 if quick else 128), [float(x) for x in args.rhos.split(",")],
        args.repeats or (2 if quick else 7), args.batches, probe_batches=2)
    payload["quick"] = quick
    return report("speed_quick" if quick else f"speed_{payload['model']}", payload, table, args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
