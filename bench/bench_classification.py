"""Classification against FLOPs (issue 13): every scheme fine-tunes smollm2 under a new classification head on the
offline stdlib-topic, scored by accuracy and macro-F1 beside the majority class's.

Usage:
    python bench/bench_classification.py           # the benchmark (smollm2 on stdlib-topic; see FULL, ~45 minutes)
    python bench/bench_classification.py --quick   # tiny-llama, 4 schemes, a few steps each: a smoke test (~40 s)

The paper leaves open how GreenTrainer compares with full fine-tuning and LoRA on a non-generative task; this answers
it with measurements: per run the measured training FLOPs (selection included) and their ratio to full fine-tuning
on the same batches, wall time, peak memory, trainable parameters, validation loss after each epoch, and test and
validation accuracy and macro-F1. Each run has a process of its own and a folder under the work directory; like
bench_quality (whose run machinery this reuses) it resumes: a finished run is read back, an interrupted one continues
from its checkpoint. Writes bench/results/classification_<model>.{json,md} (classification_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import CPU_FILE, QUIET_SHARE, _fmt, _Interrupt, run_dir, run_once  # noqa: E402
from common import command_line, write_results  # noqa: E402

from greencore import TrainConfig  # noqa: E402
from greencore.plots import format_flops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ["full", "green:0.5", "lora", "random:0.5", "top-k:2", "layernorm", "green:0.4", "green:0.7"]
QUICK_SCHEMES = ["full", "green:0.5", "lora", "layernorm"]
FULL = dict(task="classification", model="smollm2", dataset="stdlib-topic", epochs=2, max_train_examples=400,
            max_eval_examples=200, batch_size=8, max_source_tokens=64, weight_decay=0.01, probe_batches=2,
            interval=1, interval_unit="epoch", metric="taylor", k=2, lora_r=8, lora_alpha=32, device="cpu")
QUICK = dict(FULL, model="tiny-llama", epochs=1, max_train_examples=32, max_eval_examples=16, max_source_tokens=32)
# One rate per family, the picks of bench_quality's validation-loss grid for the same model (summarisation): no grid
# of its own here, to stay within the hour (bench/README.md discusses what that may cost each scheme).
LEARNING_RATES = {"full": 1e-4, "green": 3e-4, "random": 3e-4, "lora": 3e-3, "top-k": 1e-3, "layernorm": 3e-3}
TARGET_POINTS = 1.0  # the question: is green:0.5 within this many accuracy points of full fine-tuning?
_ROW_KEYS = ("label", "scheme", "rho", "status", "steps", "flops_total", "flops_selection", "flops_ratio",
             "wall_seconds", "peak_memory_bytes", "trainable_params", "accuracy", "macro_f1", "majority_accuracy",
             "majority_macro_f1", "validation_accuracy", "validation_macro_f1", "val_loss", "prediction_miss")


def configs(settings: dict, schemes: list[str]) -> list[TrainConfig]:
    return [TrainConfig(scheme=s, seed=0, lr=LEARNING_RATES[s.split(":")[0]], **settings) for s in schemes]


def run_row(out: Path, summary: dict) -> dict:
    """One run's numbers, all from its summary and its record of validation losses."""
    import json

    row = {key: summary.get(key) for key in _ROW_KEYS}
    metrics = out / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    row["val_losses"] = [m["loss"] for m in lines if m["type"] == "eval" and m.get("split") == "validation"
                         and "loss" in m]
    row["run_dir"] = out.name
    cpu = out / CPU_FILE
    row["cpu_share"] = json.loads(cpu.read_text()).get("cpu_share") if cpu.exists() else None
    return row


def checks(rows: list[dict]) -> dict:
    """The issue's two questions, answered from the rows."""
    by = {r["label"]: r for r in rows if r["status"] == "finished"}
    found: dict[str, Any] = {}
    full, green, lora = by.get("full"), by.get("green:0.5"), by.get("lora")
    if full and green:
        gap = full["accuracy"] - green["accuracy"]
        found["green_0.5_within_1_point_of_full"] = {
            "met": bool(gap <= TARGET_POINTS), "accuracy_gap": gap, "target_gap": TARGET_POINTS,
            "green_accuracy": green["accuracy"], "full_accuracy": full["accuracy"], "flops_ratio": green["flops_ratio"],
            "flops_ratio_training": green["flops_ratio"] - green["flops_selection"] / full["flops_total"]}
    if lora:
        cheaper = [r for r in by.values() if r["scheme"] == "green" and r["flops_ratio"] <= lora["flops_ratio"]]
        if cheaper:
            best = max(cheaper, key=lambda r: r["accuracy"])
            found["green_at_or_below_lora_flops_beats_lora"] = {
                "met": bool(best["accuracy"] > lora["accuracy"]), "green": best["label"],
                "green_flops_ratio": best["flops_ratio"], "green_accuracy": best["accuracy"],
                "lora_flops_ratio": lora["flops_ratio"], "lora_accuracy": lora["accuracy"]}
    return found


def table(rows: list[dict], found: dict, settings: dict, pending: list[str]) -> str:
    lines = ["FLOPs are measured (FlopCounterMode) and include GreenTrainer's profiling and probe passes; the ratio is "
             "to full fine-tuning on the same batches (the selection column: its share of the run's FLOPs). Wall time is "
             "training plus selection, marked where the run's process got under 80% of its threads' CPU time. "
             "Accuracy and macro-F1 are in percent on the test split (the "
             "validation split's beside them); the majority class is the training split's commonest, always "
             "predicted. Peak memory: the resident set's growth above the start of training, each run in a process "
             "of its own.", "",
             "| run | lr | FLOPs | ratio to full | of which selection | wall time | peak memory | trainable params "
             "| val loss (per epoch) | test accuracy | test macro-F1 | val accuracy | majority accuracy / macro-F1 |",
             "|" + "---|" * 13]
    for r in rows:
        if r["status"] != "finished":
            lines.append(f"| {r['label']} | | | | | | | | | {r['status']} | | | |")
            continue
        lr = LEARNING_RATES[r["scheme"]]
        memory = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2 ** 20:.0f} MiB"
        wall = f"{r['wall_seconds']:.0f} s"
        if r.get("cpu_share") is not None and r["cpu_share"] < QUIET_SHARE:
            wall += f" (shared CPU: got {100 * r['cpu_share']:.0f}%)"
        lines.append(
            f"| {r['label']} | {lr:g} | {format_flops(r['flops_total'])} | {r['flops_ratio']:.3f} | "
            f"{r['flops_selection'] / max(r['flops_total'], 1):.3f} | {wall} | {memory} | "
            f"{r['trainable_params']:,} | {' > '.join(f'{v:.3f}' for v in r['val_losses'])} | "
            f"{r['accuracy']:.1f} | {r['macro_f1']:.1f} | {_fmt(r['validation_accuracy'], '.1f')} | "
            f"{r['majority_accuracy']:.1f} / {r['majority_macro_f1']:.1f} |")
    lines += ["", "## Questions", ""]
    for name, result in found.items():
        detail = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in result.items() if k != "met")
        lines.append(f"- **{name}**: {'yes' if result['met'] else 'NO'} ({detail})")
    n = settings["max_eval_examples"]
    lines += ["", f"One seed, {n} test examples: one example is {100 / n:.1f} accuracy points, and the binomial standard "
              f"error of an accuracy near 50% is about {100 * (0.25 / n) ** 0.5:.1f} points, so differences of a few "
              "points between runs are within noise."]
    if pending:
        lines += ["", f"Pending: {', '.join(pending)} (run the same command again to continue)."]
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
              "Learning rates: " + ", ".join(f"{k} {v:g}" for k, v in LEARNING_RATES.items())
              + " (bench_quality's picks for the same model; no grid of this benchmark's own)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-llama, a few steps per scheme (~1 minute)")
    parser.add_argument("--results-dir", type=Path, default=None, help="where to write (default bench/results)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="run folders (default bench/results/classification_<model>; bench/work/... with --quick)")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first (re-run everything)")
    args = parser.parse_args(argv)
    settings, schemes = (QUICK, QUICK_SCHEMES) if args.quick else (FULL, SCHEMES)
    name = "classification_quick" if args.quick else f"classification_{settings['model']}"
    work = args.work_dir or (ROOT / "bench" / "work" / name if args.quick else ROOT / "bench" / "results" / name)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with _Interrupt() as interrupt:
        for i, config in enumerate(configs(settings, schemes)):
            if interrupt.requested:
                break
            out = run_dir(work, config)
            summary = run_once(config, out, interrupt, f"[{i + 1}/{len(schemes)}] {config.name}")
            rows.append(run_row(out, summary) if summary.get("status") == "finished"
                        else {"label": config.name, "status": summary.get("status")})
            done = [r for r in rows if r["status"] == "finished"]
            pending = schemes[len(rows):]
            found = checks(done)
            write_results(name, {"settings": settings, "learning_rates": LEARNING_RATES, "runs": rows,
                                 "checks": found, "pending": pending, "complete": not pending},
                          table(rows, found, settings, pending), command_line(), args.results_dir)
    print((args.results_dir or ROOT / "bench" / "results") / f"{name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
