"""Quality against FLOPs: every scheme fine-tuned on the same data with the same settings, scored by ROUGE.

Usage:
    python bench/bench_quality.py                 # the full benchmark (smollm2 on stdlib-tldr; see FULL below)
    python bench/bench_quality.py --quick         # tiny-gpt2, a few steps per scheme: a smoke test (~1 minute)
    python bench/bench_quality.py --estimate      # time a few steps of the full configuration and extrapolate
    python bench/bench_quality.py --model minilm  # minilm's recorded settings (MODEL_SETTINGS); quality_minilm.*

Schemes: full, lora, top-k:2, bitfit, green at rho 0.4/0.5/0.6/0.7 and random at 0.5 (seed 0), and the headline
schemes full, lora and green:0.5 again with seed 1 for the spread. Every number comes from the run summaries the
training engine writes (`greencore.train`): measured training FLOPs including GreenTrainer's profiling and
probe passes, the full fine-tuning FLOPs of the same batches, wall time, peak memory, validation loss and test ROUGE.

Resumable: each run lives in `<work-dir>/<scheme>-seed<seed>/`. A finished run is read back, not re-run; an
interrupted one (Ctrl-C checkpoints first) continues from its last checkpoint. Results are rewritten after every run,
so a partial benchmark always has its finished runs on disk. Writes bench/results/quality_<model>.{json,md,png}
(quality_quick.* with --quick, quality_estimate_<model>.* with --estimate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    command_line,
    contention_note,
    markdown_table,
    timing_context,
    write_results,
)
from greencore.training import Run, TrainConfig  # noqa: E402
from greencore.plots import format_flops  # noqa: E402
from greencore.records import checkpoints, load_run  # noqa: E402

SCHEMES = ["full", "green:0.5", "lora", "random:0.5", "top-k:2", "layernorm", "green:0.4", "green:0.6", "green:0.7"]
# The schemes each model's recorded results ran, where they differ from SCHEMES: minilm's were taken with BitFit (BERT
# has biases; the LLaMA family has none, so BitFit on smollm2 is a clear error, not a row) and without layernorm.
MODEL_SCHEMES = {m: ["full", "lora", "top-k:2", "bitfit", "green:0.4", "green:0.5", "green:0.6", "green:0.7",
                     "random:0.5"] for m in ("minilm", "minilm-seq2seq")}
HEADLINE = ["full", "lora", "green:0.5"]
SEEDS = (0, 1)

# The full configuration: smollm2 (the offline default) on stdlib-tldr, two epochs over the first 800 training pairs
# (781 fit the length limits: 97 steps of 8 per epoch), one selection per epoch from 2 probe batches, validation loss
# after each epoch, ROUGE on the first 100 validation and 100 test pairs with beam search 2. The learning rate is
# each scheme's own, picked by the grid below. About 5 hours on 2 CPU cores, resumable across sessions.
FULL = dict(model="smollm2", dataset="stdlib-tldr", epochs=2, max_train_examples=800, max_eval_examples=100,
            batch_size=8, max_source_tokens=128, max_target_tokens=32, weight_decay=0.01, num_beams=2,
            probe_batches=2, interval=1, interval_unit="epoch", metric="taylor", k=2, lora_r=8, lora_alpha=32,
            keep_checkpoints=1, device="cpu")
# What other models change in FULL. minilm's results (quality_minilm*, taken when it was the default) used one lr,
# 5e-4, for every scheme and one epoch over 1,600 pairs: in 77-step pilots of full fine-tuning 5e-4 reached a lower
# validation loss (5.79) than 1e-4 (6.03) or 1e-3 (5.85). A fixed lr here skips the grid.
MODEL_SETTINGS = {m: dict(lr=5e-4, epochs=1, max_train_examples=1600) for m in ("minilm", "minilm-seq2seq")}
# --quick: a random tiny GPT-2, 4 steps per scheme, ROUGE on 4 examples. Checks the machinery, not the method.
QUICK = dict(FULL, model="tiny-gpt2", epochs=1, max_train_examples=32, max_eval_examples=4, max_source_tokens=48,
             max_target_tokens=24, num_beams=1)

# The learning-rate grid: every scheme family is trained briefly at each rate of LR_START (the first GRID pairs, one
# epoch) and the rate with the lowest validation loss wins; a winner at an edge of what was tried is extended one
# rung along LR_LADDER in that direction (at most GRID_EXTENSIONS times), so no scheme is held at the grid's edge.
# GreenTrainer at every rho and random selection share green:0.5's rate: they differ only in which tensors train.
LR_LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
LR_START = (3e-5, 1e-4, 3e-4)
GRID_EXTENSIONS = 2
GRID = dict(max_train_examples=200, epochs=1, max_eval_examples=50, eval_rouge=False)  # 195 usable: 24 steps of 8
QUICK_GRID = dict(max_train_examples=16, epochs=1, max_eval_examples=4, eval_rouge=False)

TARGET_RATIO = 0.52  # green:0.5 must spend at most this share of full fine-tuning's FLOPs ...
TARGET_ROUGE_GAP = 1.0  # ... and lose at most this many ROUGE-L points


def lr_family(scheme: str) -> str:
    """The scheme whose grid sets `scheme`'s learning rate: green:0.5 for every green and random run, else itself."""
    return "green:0.5" if scheme.split(":")[0] in ("green", "random") else scheme


def plan(settings: dict, schemes: list[str], headline: list[str], seeds: tuple[int, ...],
         lrs: dict[str, float] | None = None) -> list[TrainConfig]:
    """Every run of the benchmark, in the order they run: all schemes with the first seed, then the repeats; each
    with its family's rate from `lrs` (the grid's picks) unless `settings` fixes one."""
    def config(scheme: str, seed: int) -> TrainConfig:
        lr = settings.get("lr") or (lrs or {})[lr_family(scheme)]
        return TrainConfig(scheme=scheme, seed=seed, **{**settings, "lr": lr})

    configs = [config(s, seeds[0]) for s in schemes]
    configs += [config(s, seed) for seed in seeds[1:] for s in headline if s in schemes]
    return configs


def run_dir(work: Path, config: TrainConfig) -> Path:
    return work / f"{config.name.replace(':', '-')}-seed{config.seed}"


def _same_config(saved: dict, config: TrainConfig) -> bool:
    return TrainConfig.from_dict(saved).to_dict() == config.to_dict()


def finished_summary(out: Path, config: TrainConfig) -> dict | None:
    """The summary of a finished run of exactly `config` in `out`, or None; a different config there is an error."""
    record = out / "config.json"
    if not record.exists():
        return None
    saved = json.loads(record.read_text())
    if not _same_config(saved, config):
        raise SystemExit(f"{out} holds a run with another configuration than this benchmark's; use another "
                         f"--work-dir, or --fresh to delete the work folder and start over")
    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("status") == "finished":
            return summary
    return None


class _Interrupt:
    """Ctrl-C asks the current run to stop cleanly (checkpoint and summary first); a second Ctrl-C kills. In the
    benchmark's process it passes the request on to the run's own process; in that process it stops the run."""

    def __init__(self) -> None:
        self.run: Run | None = None
        self.child: Any = None
        self.requested = False

    def __enter__(self) -> "_Interrupt":
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this step (checkpoint first); Ctrl-C again to kill", flush=True)
        if self.run is not None:
            self.run.stop("interrupted")
        if self.child is not None and self.child.is_alive():
            os.kill(self.child.pid, signal.SIGINT)


def execute(config: TrainConfig, out: Path, interrupt: _Interrupt) -> dict:
    """Run (or continue) one scheme in `out` and return its summary."""
    if (out / "config.json").exists() and checkpoints(out):
        print(f"  resuming {out.name} from {checkpoints(out)[-1].name}", flush=True)
        run = Run.resume(out)
    else:
        run = Run(config, out, overwrite=True)
    interrupt.run = run
    if interrupt.requested:  # Ctrl-C came while the run was being set up
        run.stop("interrupted")
    try:
        for event in run.events():
            if event["type"] == "selection":
                print(f"  selection {event['index']}: {event['trainable_tensors']} tensors, predicted ratio "
                      f"{event['predicted_ratio']:.3f}", flush=True)
            elif event["type"] == "eval" and event.get("split") == "validation" and "loss" in event:
                print(f"  validation loss {event['loss']:.4f} after step {event['step']}", flush=True)
    finally:
        interrupt.run = None
    return run.summary


def _execute_here(config: dict, out: str) -> None:
    """The body of a run's own process: run `config` in `out`, noting the CPU it got; a Ctrl-C passed on by the
    benchmark stops the run cleanly. It starts in its own process group, so a terminal's Ctrl-C reaches it once,
    through the benchmark."""
    os.setpgrp()
    started, cpu_started = time.time(), time.process_time()
    with _Interrupt() as interrupt:
        try:
            execute(TrainConfig.from_dict(config), Path(out), interrupt)
        finally:
            record_cpu_share(Path(out), time.time() - started, time.process_time() - cpu_started)


def execute_fresh(config: TrainConfig, out: Path, interrupt: _Interrupt) -> dict:
    """`execute` in a fresh process, so each run's peak memory (the resident set above its start) is its own: the
    memory a finished run freed stays with the process that ran it, and a later run in that process would read
    as needing none. Returns the summary the run wrote, or a failed one when its process died without one."""
    import multiprocessing

    started = time.time()
    child = multiprocessing.get_context("spawn").Process(target=_execute_here, args=(config.to_dict(), str(out)))
    child.start()
    interrupt.child = child
    try:
        child.join()
    finally:
        interrupt.child = None
        if child.is_alive():
            child.kill()
            child.join()
    summary_path = out / "summary.json"
    if summary_path.exists() and summary_path.stat().st_mtime >= started:
        return json.loads(summary_path.read_text())
    if interrupt.requested:  # stopped before it could write a summary (while starting up)
        return {"status": "interrupted"}
    raise RuntimeError(f"the run's process exited with code {child.exitcode} without a summary")


def run_once(config: TrainConfig, out: Path, interrupt: _Interrupt, title: str, fresh_process: bool = True) -> dict:
    """The summary of `config`'s run in `out`: read back when it finished earlier, else run (or continued) now, in a
    fresh process unless told otherwise (the grid's short runs report no memory). A failure is returned as a summary with status "failed", so one scheme cannot lose the others.
    A finished run's checkpoints are deleted: the benchmark keeps records (config, metrics, selections, summary),
    not weights."""
    summary = finished_summary(out, config)
    if summary is not None:
        print(f"{title}: finished earlier, read back", flush=True)
        return summary
    print(f"{title} -> {out}", flush=True)
    started = time.time()
    try:
        summary = (execute_fresh if fresh_process else execute)(config, out, interrupt)
    except Exception as err:  # one failing scheme must not lose the others: record it and go on
        traceback.print_exc()
        summary = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    print(f"  {summary['status']} in {time.time() - started:.0f} s: FLOPs ratio "
          f"{_fmt(summary.get('flops_ratio'), '.3f')}, validation loss {_fmt(summary.get('val_loss'), '.4f')}, "
          f"{config.task_spec.headline} {_fmt(summary.get(config.task_spec.headline), '.2f')}", flush=True)
    if summary.get("status") == "finished":
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return summary


CPU_FILE = "bench_cpu.json"  # the benchmark's own note in a run folder: how much CPU the run got
QUIET_SHARE = 0.8  # a run whose process got less of its threads' CPU time than this shared the machine


def record_cpu_share(out: Path, elapsed: float, cpu_seconds: float) -> None:
    """Add this stretch of a run (wall and process CPU seconds, in the run's own process) to `<out>/bench_cpu.json`.
    CPU time over wall time per torch thread says whether something else shared the cores while the run's wall time
    was taken. `fresh_process` says the run never shared its process with another (notes older than that lack it)."""
    import torch

    path = out / CPU_FILE
    if not out.exists():
        return
    seen = json.loads(path.read_text()) if path.exists() else {"elapsed": 0.0, "cpu_seconds": 0.0,
                                                                "fresh_process": True}
    seen = {"elapsed": seen["elapsed"] + elapsed, "cpu_seconds": seen["cpu_seconds"] + cpu_seconds,
            "threads": torch.get_num_threads(), "fresh_process": seen.get("fresh_process", False)}
    seen["cpu_share"] = seen["cpu_seconds"] / max(seen["elapsed"], 1e-9) / seen["threads"]
    tmp = path.with_name(f".{CPU_FILE}.tmp")
    tmp.write_text(json.dumps(seen, indent=2) + "\n")
    tmp.replace(path)


def grid_dir(work: Path, config: TrainConfig) -> Path:
    return work / "grid" / f"{config.name.replace(':', '-')}-lr{config.lr:g}"


def tune_learning_rates(settings: dict, families: list[str], grid: dict, work: Path,
                        interrupt: _Interrupt) -> tuple[dict[str, float], list[dict]]:
    """Each family's learning rate: the lowest validation loss of short runs over LR_START, extended along LR_LADDER
    while the best rate lies at an edge of those tried. Returns the picks and one row per grid run (a run that
    failed or diverged counts as an infinite loss). Stops early, with what it has, when interrupted."""
    picks: dict[str, float] = {}
    rows: list[dict] = []
    for family in families:
        tried: dict[float, float] = {}
        queue = list(LR_START)
        while queue and not interrupt.requested:
            lr = queue.pop(0)
            config = TrainConfig(scheme=family, seed=0, **{**settings, **grid, "lr": lr})
            out = grid_dir(work, config)
            summary = run_once(config, out, interrupt, f"grid {family} lr {lr:g}", fresh_process=False)
            if summary.get("status") not in ("finished", "failed"):
                break  # interrupted mid-run: it resumes from its checkpoint next time
            loss = summary.get("val_loss")
            tried[lr] = loss if loss is not None and math.isfinite(loss) else math.inf
            rows.append({"family": family, "lr": lr, "status": summary["status"], "val_loss": loss,
                         "steps": summary.get("steps"), "wall_seconds": summary.get("wall_seconds"),
                         "error": summary.get("error"), "run_dir": str(out.relative_to(work))})
            if not queue:
                best = min(tried, key=tried.get)
                rung = LR_LADDER.index(best)
                step = 1 if best == max(tried) else -1 if best == min(tried) else 0
                extended = len(tried) - len(LR_START)
                if step and 0 <= rung + step < len(LR_LADDER) and extended < GRID_EXTENSIONS \
                        and LR_LADDER[rung + step] not in tried:
                    queue.append(LR_LADDER[rung + step])
        if tried and not queue and not interrupt.requested:
            picks[family] = min(tried, key=tried.get)
    return picks, rows


def zero_shot_row(settings: dict, work: Path) -> dict:
    """The untrained model scored like every run (validation loss, test and validation ROUGE, same prompt, lengths
    and beams): the floor every fine-tuned run must clear. Kept in `<work>/zero-shot/scores.json` and read back."""
    from bench.common import zero_shot_scores

    config = TrainConfig(scheme="full", seed=0, **{**settings, "lr": settings.get("lr") or 1e-4})
    path = work / "zero-shot" / "scores.json"
    wanted = {k: v for k, v in config.to_dict().items() if k not in ("scheme", "lr", "label")}
    saved = json.loads(path.read_text()) if path.exists() else None
    # read through TrainConfig, so a setting added since (at its default) does not count as a change
    if saved is None or {k: v for k, v in TrainConfig.from_dict({**saved["config"], "scheme": "full", "lr": config.lr})
                         .to_dict().items() if k in wanted} != wanted:
        print("zero-shot: scoring the untrained model", flush=True)
        started = time.time()
        scores = zero_shot_scores(config)
        saved = {"config": wanted, "scores": scores, "seconds": time.time() - started}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".scores.json.tmp")
        tmp.write_text(json.dumps(saved, indent=2) + "\n")
        tmp.replace(path)
    else:
        print("zero-shot: scored earlier, read back", flush=True)
    scores = saved["scores"]
    row: dict[str, Any] = {key: None for key in _ROW_KEYS}
    samples = scores["test"]["predictions"][:5]  # as many as a run's record keeps, for the same count
    row.update({
        "label": "zero-shot", "scheme": "none", "status": "finished", "steps": 0, "seed": 0, "run_dir": "zero-shot",
        "val_loss": scores["val_loss"], "validation_rougeL": scores["validation"]["rougeL"],
        **{k: scores["test"][k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
        "trainable_params": 0, "selected_tensors": [], "predicted_ratio": [],
        "test_sample_predictions": samples, "distinct_sample_predictions": len(set(samples)),
        "distinct_test_predictions": len(set(scores["test"]["predictions"])),
        "eval_seconds": saved["seconds"]})
    return row


# --------------------------------------------------------------------------------------------------- results

_ROW_KEYS = ("label", "scheme", "rho", "k", "status", "steps", "flops_total", "flops_training", "flops_selection",
             "flops_full_equivalent", "flops_ratio", "flops_ratio_training", "val_loss", "rouge1", "rouge2",
             "rougeL", "rougeLsum", "validation_rougeL", "wall_seconds", "selection_seconds", "eval_seconds",
             "peak_memory_bytes", "trainable_params", "total_params", "train_examples", "selections")


def run_row(config: TrainConfig, out: Path, summary: dict) -> dict:
    """One run's numbers, all from its summary (plus the tensors each selection chose, from its record)."""
    row = {key: summary.get(key) for key in _ROW_KEYS}
    row["seed"] = config.seed
    row["lr"] = config.lr
    row["run_dir"] = out.name
    cpu = json.loads((out / CPU_FILE).read_text()) if (out / CPU_FILE).exists() else {}
    row["cpu_share"] = cpu.get("cpu_share")
    if not cpu.get("fresh_process"):  # run after another in one process: the resident set it grew into was there
        row["peak_memory_bytes"] = None
    record = load_run(out)
    row["selected_tensors"] = [s["trainable_tensors"] for s in record.selections]
    row["val_loss_per_epoch"] = [m["loss"] for m in record.metrics
                                 if m["type"] == "eval" and m.get("split") == "validation" and "loss" in m]
    row["predicted_ratio"] = [s["predicted_ratio"] for s in record.selections]
    # the engine keeps 5 test predictions: a model that answers every input alike scores ROUGE from its prior alone
    tests = [m for m in record.metrics if m["type"] == "eval" and m.get("split") == "test" and "examples" in m]
    samples = [e["prediction"] for e in tests[-1]["examples"]] if tests else []
    row["test_sample_predictions"] = samples
    row["distinct_sample_predictions"] = len(set(samples))
    return row


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def spread(rows: list[dict], headline: list[str]) -> list[dict]:
    """Per headline scheme with more than one seed: mean, min and max of ROUGE-L, validation loss and FLOPs ratio."""
    out = []
    for label in headline:
        mine = [r for r in rows if r["label"] == label and r["rougeL"] is not None]
        if len(mine) < 2:
            continue
        entry: dict[str, Any] = {"label": label, "seeds": [r["seed"] for r in mine]}
        for key in ("rouge1", "rouge2", "rougeL", "val_loss", "flops_ratio", "wall_seconds"):
            values = [r[key] for r in mine]
            entry[key] = {"mean": _mean(values), "min": min(values), "max": max(values),
                          "range": max(values) - min(values)}
        out.append(entry)
    return out


def _by_label(rows: list[dict], label: str, seed: int | None = None) -> list[dict]:
    return [r for r in rows if r["label"] == label and r["rougeL"] is not None and (seed is None or r["seed"] == seed)]


def checks(rows: list[dict], first_seed: int, zero_shot: dict | None = None) -> dict:
    """The issue's targets, on the first seed's runs and, where both schemes have several seeds, on seed means."""
    result: dict[str, Any] = {}
    if zero_shot is not None and rows:
        below = [f"{r['label']} (seed {r['seed']})" for r in rows if r["rougeL"] <= zero_shot["rougeL"]]
        result["every_run_above_zero_shot"] = {
            "zero_shot_rougeL": zero_shot["rougeL"], "lowest_rougeL": min(r["rougeL"] for r in rows),
            "runs_not_above": ", ".join(below) or "none", "met": not below}
    full, green = _by_label(rows, "full"), _by_label(rows, "green:0.5")
    if full and green:
        for basis in ("first_seed", "seed_mean"):
            f = [r for r in full if basis == "seed_mean" or r["seed"] == first_seed]
            g = [r for r in green if basis == "seed_mean" or r["seed"] == first_seed]
            if not f or not g or (basis == "seed_mean" and (len(f) < 2 or len(g) < 2)):
                continue
            gap = _mean([r["rougeL"] for r in f]) - _mean([r["rougeL"] for r in g])
            ratio = _mean([r["flops_ratio"] for r in g])
            result[f"green_0.5_vs_full_{basis}"] = {
                "rougeL_gap": gap, "flops_ratio": ratio, "target_gap": TARGET_ROUGE_GAP, "target_ratio": TARGET_RATIO,
                "met": bool(gap <= TARGET_ROUGE_GAP and ratio <= TARGET_RATIO)}
    lora = _by_label(rows, "lora", first_seed)
    if lora:
        cheaper = [r for r in rows if r["scheme"] == "green" and r["seed"] == first_seed and r["rougeL"] is not None
                   and r["flops_ratio"] < lora[0]["flops_ratio"]]
        if cheaper:
            best = max(cheaper, key=lambda r: r["rho"])  # the largest rho still below LoRA's measured FLOPs
            result["green_below_lora_flops_vs_lora"] = {
                "green": best["label"], "green_flops_ratio": best["flops_ratio"], "green_rougeL": best["rougeL"],
                "lora_flops_ratio": lora[0]["flops_ratio"], "lora_rougeL": lora[0]["rougeL"],
                "met": bool(best["rougeL"] >= lora[0]["rougeL"])}
    rand, green0 = _by_label(rows, "random:0.5", first_seed), _by_label(rows, "green:0.5", first_seed)
    if rand and green0:
        noise = spread(rows, ["green:0.5"])
        margin = max(1.0, noise[0]["rougeL"]["range"]) if noise else 1.0
        diff = green0[0]["rougeL"] - rand[0]["rougeL"]
        result["random_0.5_below_green_0.5"] = {
            "green_rougeL": green0[0]["rougeL"], "random_rougeL": rand[0]["rougeL"], "difference": diff,
            "required_margin": margin, "met": bool(diff > margin),
            "note": "clearly below = by more than max(1 point, green:0.5's ROUGE-L range over seeds)"}
    return result


def _fmt(value: Any, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _wall(row: dict) -> str:
    """A run's wall time, marked when the run shared the CPU (its process got under QUIET_SHARE of its threads)."""
    if row["wall_seconds"] is None:
        return "-"
    share = row.get("cpu_share")
    shared = f" (shared CPU: got {share:.0%})" if share is not None and share < QUIET_SHARE else ""
    return f"{row['wall_seconds']:.0f} s{shared}"


def grid_table(p: Progress) -> list[str]:
    """The learning-rate grid's runs and picks, as Markdown lines."""
    if not p.grid:
        return []
    body = [[g["family"], f"{g['lr']:g}", g["status"], g["steps"] or "-", _fmt(g["val_loss"], ".4f"),
             "picked" if p.lrs.get(g["family"]) == g["lr"] else ""] for g in p.grid]
    grid = {**(QUICK_GRID if p.quick else GRID)}
    return ["## Learning rates", "",
            f"Each family trained for one epoch over the first {grid['max_train_examples']} training pairs at each "
            f"rate of {', '.join(f'{lr:g}' for lr in LR_START)} (extended one rung of "
            f"{', '.join(f'{lr:g}' for lr in LR_LADDER)} while the best lay at an edge, at most {GRID_EXTENSIONS} "
            f"times), the same other settings as the runs below; validation loss on the first "
            f"{grid['max_eval_examples']} validation pairs picks the rate. Every green and random run takes "
            "green:0.5's rate.", "",
            markdown_table(["family", "lr", "status", "steps", "validation loss", ""], body), ""]


def results_table(p: Progress, spreads: list[dict], found: dict, pending: list[str]) -> str:
    """The Markdown written next to the JSON."""
    rows, failed, settings = p.rows, p.failed, p.settings
    header = ["run", "seed", "lr", "status", "training FLOPs", "ratio to full", "of which selection", "wall time (train)",
              "peak memory", "trainable params", "tensors selected", "val loss (after each epoch)", "ROUGE-1", "ROUGE-2", "ROUGE-L",
              "distinct sample outputs (of up to 5)"]
    body = []
    for r in ([p.zero_shot] if p.zero_shot else []) + rows:
        full = r["flops_full_equivalent"] or 0
        selection_share = r["flops_selection"] / full if full and r["flops_selection"] is not None else None
        mem = r["peak_memory_bytes"]
        body.append([
            r["label"], r["seed"], _fmt(r.get("lr"), "g"), r["status"],
            "-" if r["flops_total"] is None else format_flops(r["flops_total"]), _fmt(r["flops_ratio"], ".3f"),
            _fmt(selection_share, ".3f"), _wall(r),
            "-" if mem is None else f"{mem / 2**20:.0f} MiB", f"{r['trainable_params']:,}",
            ",".join(str(n) for n in r["selected_tensors"]) or "-",
            " > ".join(f"{v:.3f}" for v in r.get("val_loss_per_epoch") or [r["val_loss"]]),
            _fmt(r["rouge1"], ".2f"), _fmt(r["rouge2"], ".2f"), _fmt(r["rougeL"], ".2f"),
            r.get("distinct_sample_predictions", "-")])
    lines = grid_table(p) + ["## Runs", "",
             "zero-shot is the untrained model, scored the same way (no training: no FLOPs). "
             "FLOPs are measured (FlopCounterMode) and include GreenTrainer's profiling and probe passes; the ratio is "
             "to full fine-tuning on the same batches. Wall time is training plus selection (evaluation excluded); "
             f"it is marked where the run's process got less than {QUIET_SHARE:.0%} of its threads' CPU time "
             "(something else shared the cores, so that time is slower than a quiet machine's). "
             "Peak memory is the peak resident set above the start of training (CPU), each run in a fresh process; "
             "'-' where a run shared its process with earlier ones (taken before the benchmark gave each run its "
             "own), whose freed memory the process kept, so that run's peak would read too low (bench_memory "
             "measures one step of each scheme properly). The last column counts the "
             "distinct outputs among the test predictions the run record keeps (up to 5): 1 means the model writes "
             "the same summary for every input, and its ROUGE measures that one sentence, not summarisation.", "",
             markdown_table(header, body)]
    if spreads:
        lines += ["", "## Spread over seeds", "",
                  markdown_table(["scheme", "seeds", "ROUGE-L mean", "ROUGE-L min-max", "val loss min-max",
                                  "FLOPs ratio min-max"],
                                 [[s["label"], ",".join(map(str, s["seeds"])), f"{s['rougeL']['mean']:.2f}",
                                   f"{s['rougeL']['min']:.2f}-{s['rougeL']['max']:.2f}",
                                   f"{s['val_loss']['min']:.3f}-{s['val_loss']['max']:.3f}",
                                   f"{s['flops_ratio']['min']:.3f}-{s['flops_ratio']['max']:.3f}"] for s in spreads])]
    if found:
        lines += ["", "## Targets", ""]
        for name, c in found.items():
            detail = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items()
                               if k not in ("met", "note"))
            lines.append(f"- **{name}**: {'met' if c['met'] else 'NOT met'} ({detail})")
    constant = [f"{r['label']} (seed {r['seed']})" for r in rows if r.get("distinct_sample_predictions") == 1]
    if constant:
        lines += ["", "Runs that wrote one and the same summary for every kept test input (up to 5): "
                  f"{', '.join(constant)}. Their ROUGE scores that one sentence; a target met between such runs is "
                  "not evidence about summarisation (compare validation losses instead)."]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {f['label']} (seed {f['seed']}): {f['error']}" for f in failed]
    if pending:
        lines += ["", f"Not finished yet: {', '.join(pending)}."]
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    return "\n".join(lines)


def plot(rows: list[dict], zero_shot: dict | None, path: Path, title: str) -> str | None:
    """ROUGE-L against FLOPs saved (PNG, matplotlib); headline schemes show their seed range as error bars, the
    zero-shot model a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install matplotlib)", file=sys.stderr)
        return None
    scored = [r for r in rows if r["rougeL"] is not None and r["flops_ratio"] is not None]
    if not scored:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    colors = {"full": "#1f77b4", "lora": "#ff7f0e", "top-k": "#8c564b", "bitfit": "#9467bd", "green": "#2ca02c",
              "random": "#7f7f7f", "layernorm": "#e377c2", "prefix": "#17becf"}
    for i, label in enumerate(dict.fromkeys(r["label"] for r in scored)):
        mine = [r for r in scored if r["label"] == label]
        x = [100 * (1 - r["flops_ratio"]) for r in mine]
        y = [r["rougeL"] for r in mine]
        xm, ym = _mean(x), _mean(y)
        color = colors.get(mine[0]["scheme"], "black")
        if len(mine) > 1:
            ax.errorbar(xm, ym, yerr=[[ym - min(y)], [max(y) - ym]], xerr=[[xm - min(x)], [max(x) - xm]], fmt="o",
                        color=color, capsize=4, markersize=8)
        else:
            ax.plot(xm, ym, "o", color=color, markersize=8)
        ax.annotate(label + (f" ({len(mine)} seeds)" if len(mine) > 1 else ""), (xm, ym),
                    textcoords="offset points", xytext=(6, 6 - 12 * (i % 3)), fontsize=9)
    if zero_shot is not None:
        ax.axhline(zero_shot["rougeL"], color="black", linestyle="--", linewidth=1, label="zero-shot (untrained)")
        ax.legend(loc="lower left", fontsize=9)
    ax.set_xlabel("training FLOPs saved vs full fine-tuning (%), measured, selection included")
    ax.set_ylabel("test ROUGE-L")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return str(path)


@dataclass
class Progress:
    """What the benchmark has so far; written out after every run, so a partial benchmark is never lost."""

    settings: dict
    quick: bool
    first_seed: int
    context: dict
    grid: list[dict] = field(default_factory=list)
    lrs: dict[str, float] = field(default_factory=dict)
    zero_shot: dict | None = None
    rows: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    configs: list[TrainConfig] = field(default_factory=list)

    def pending(self) -> list[str]:
        done = {(r["label"], r["seed"]) for r in self.rows + self.failed}
        return [f"{c.name} (seed {c.seed})" for c in self.configs if (c.name, c.seed) not in done]


def write(name: str, p: Progress, results_dir: Path | None) -> None:
    spreads = spread(p.rows, HEADLINE)
    found = checks(p.rows, p.first_seed, p.zero_shot)
    pending = p.pending() if p.configs else ["every run (the learning-rate grid is not finished)"]
    out = Path(results_dir) if results_dir is not None else RESULTS_DIR
    png = plot(p.rows, p.zero_shot, out / f"{name}.png", f"{p.settings['model']} on {p.settings['dataset']}: "
               "ROUGE-L vs FLOPs saved" + (" (quick smoke run)" if p.quick else ""))
    payload = {
        "description": "Every scheme fine-tuned with the same data, steps, seed and settings at its own learning rate "
                       "(the grid's pick); numbers from the run summaries (measured FLOPs incl. selection overhead, "
                       "ratio to full fine-tuning on the same batches, wall time, peak memory, validation loss, test "
                       "ROUGE in percent) and the untrained model scored the same way (zero_shot).",
        "quick": p.quick, "settings": p.settings, "lr_grid": {"start": list(LR_START), "ladder": list(LR_LADDER),
                                                              "runs": p.grid, "picked": p.lrs},
        "zero_shot": p.zero_shot, "runs": p.rows, "failed": p.failed, "spread": spreads, "checks": found,
        "constant_output_runs": [[r["label"], r["seed"]] for r in p.rows
                                 if r.get("distinct_sample_predictions") == 1],
        "pending": pending, "complete": not pending and not p.failed, "plot": Path(png).name if png else None,
        "timing": {"context_at_start": p.context, "context_at_end": timing_context(),
                   "note": contention_note(p.context, timing_context())},
    }
    write_results(name, payload, results_table(p, spreads, found, pending)
                  + f"\n\nMachine load: {payload['timing']['note']}", command_line(), results_dir)


def settings_for(model: str | None, quick: bool) -> dict:
    """FULL (QUICK with `quick`) for `model` (default: FULL's), with the model's own changes (MODEL_SETTINGS)."""
    if quick:
        return dict(QUICK, model=model or QUICK["model"])
    model = model or FULL["model"]
    return {**FULL, **MODEL_SETTINGS.get(model, {}), "model": model}


def results_name(base: str, quick: bool, settings: dict) -> str:
    """quality_<model> (or quality_estimate_<model>), quality_quick for --quick: a file says which model it holds."""
    return f"{base}_quick" if quick else f"{base}_{settings['model']}"


def default_work(name: str, quick: bool) -> Path:
    """Where the run folders live: bench/results/<name>/ for a real benchmark (committed without checkpoints, so the
    runs open in the app's Compare tab and a later session resumes from them), bench/work/ for --quick."""
    return ROOT / "bench" / "work" / name if quick else RESULTS_DIR / name


def run_benchmark(args: argparse.Namespace, settings: dict) -> int:
    name = results_name("quality", args.quick, settings)
    work = args.work_dir or default_work(name, args.quick)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    schemes = args.schemes.split(",") if args.schemes else MODEL_SCHEMES.get(settings["model"], SCHEMES)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    p = Progress(settings=settings, quick=args.quick, first_seed=seeds[0], context=timing_context())
    status = 0
    with _Interrupt() as interrupt:
        if not settings.get("lr"):
            families = list(dict.fromkeys(lr_family(s) for s in schemes))
            p.lrs, p.grid = tune_learning_rates(settings, families, QUICK_GRID if args.quick else GRID, work,
                                                interrupt)
            print("learning rates:", ", ".join(f"{f} {lr:g}" for f, lr in p.lrs.items()), flush=True)
        if not interrupt.requested:
            p.configs = plan(settings, schemes, HEADLINE, seeds, p.lrs)
            if not args.no_zero_shot:
                p.zero_shot = zero_shot_row(settings, work)
            write(name, p, args.results_dir)
        for i, config in enumerate(p.configs, 1):
            if interrupt.requested:
                break
            out = run_dir(work, config)
            summary = run_once(config, out, interrupt, f"[{i}/{len(p.configs)}] {config.name} seed {config.seed} "
                                                       f"lr {config.lr:g}")
            if summary.get("status") == "finished":
                p.rows.append(run_row(config, out, summary))
            elif summary.get("status") == "failed":
                p.failed.append({"label": config.name, "seed": config.seed, "run_dir": out.name,
                                 "error": summary.get("error")})
                status = 1
            write(name, p, args.results_dir)
        if interrupt.requested:
            write(name, p, args.results_dir)
            print("interrupted: run the same command again to continue (the run that was stopped resumes from its "
                  "checkpoint)", flush=True)
            status = 130
    print((RESULTS_DIR if args.results_dir is None else args.results_dir) / f"{name}.md")
    return status


# --------------------------------------------------------------------------------------------------- estimate


_TIMING_KEYS = ("model", "dataset", "batch_size", "max_source_tokens", "max_target_tokens", "num_beams",
                "probe_batches")


def time_probes(args: argparse.Namespace, settings: dict, work: Path) -> dict:
    """Run a few steps (and the evaluation on a few examples) of each scheme in --estimate-schemes; time them."""
    import numpy as np
    import torch

    from greencore.data import load_summarization

    steps_timed = args.estimate_steps
    if work.exists():
        shutil.rmtree(work)
    probes = {}
    for scheme in args.estimate_schemes.split(","):
        config = TrainConfig(scheme=scheme, seed=0, **{**settings, "lr": settings.get("lr") or 1e-4,
                                                        "max_steps": steps_timed,
                                                        "max_eval_examples": args.estimate_eval_examples})
        out = work / scheme.replace(":", "-")
        started, cpu_started = time.time(), time.process_time()
        run = Run(config, out)
        for _ in run.events():
            pass
        elapsed, cpu = time.time() - started, time.process_time() - cpu_started
        s = run.summary
        train_rows = [m for m in load_run(out).metrics if m["type"] == "train"]
        step_times = np.diff([0.0] + [m["time"] for m in train_rows])
        n_eval = sum(len(load_summarization(settings["dataset"], max_examples=args.estimate_eval_examples)[split])
                     for split in ("validation", "test"))
        probes[scheme] = {
            "steps": s["steps"], "elapsed_seconds": elapsed, "wall_seconds": s["wall_seconds"],
            "eval_seconds": s["eval_seconds"], "selection_seconds": s["selection_seconds"],
            "step_seconds": step_times.tolist(), "median_step_seconds": float(np.median(step_times)),
            "flops_ratio": s["flops_ratio"], "flops_ratio_training": s["flops_ratio_training"],
            "eval_examples": n_eval,
            "setup_seconds": elapsed - s["wall_seconds"] - s["eval_seconds"],
            "cpu_seconds": cpu, "cpu_share": cpu / elapsed / max(1, torch.get_num_threads()),
        }
        print(scheme, json.dumps({k: v for k, v in probes[scheme].items() if k != "step_seconds"}), flush=True)

    shutil.rmtree(work, ignore_errors=True)
    return probes


def estimate(args: argparse.Namespace, settings: dict) -> int:
    """Time a few steps of full, green and LoRA on the full configuration and extrapolate the whole benchmark."""
    import numpy as np
    import torch

    from greencore.data import encode_examples, load_summarization
    from greencore.models import load_model
    from greencore.profile import profile_model
    from greencore.data import collate
    from greencore.importance import tensor_importance
    from greencore.schemes import parse_scheme

    context = timing_context()
    work = Path(args.work_dir or ROOT / "bench" / "work" / "quality_estimate")
    if args.estimate_from:
        earlier = json.loads(Path(args.estimate_from).read_text())
        timed_on = {k: earlier["settings"][k] for k in _TIMING_KEYS}
        if timed_on != {k: settings[k] for k in _TIMING_KEYS}:
            raise SystemExit(f"{args.estimate_from} timed other settings ({timed_on}); time them again")
        probes = earlier["probes"]
        timed = earlier.get("probes_timed") or {"date": earlier["meta"]["date"], "command": earlier["meta"]["command"],
                                                 "load": earlier["timing"]["note"]}
    else:
        probes = time_probes(args, settings, work)
        timed = {"date": "this run", "command": command_line(), "load": contention_note(context, timing_context())}

    # predicted FLOPs ratio of every scheme on the first training batch (the selection's own prediction for green)
    torch.manual_seed(0)
    model, tokenizer = load_model(settings["model"], device="cpu")
    model.train()
    data = load_summarization(settings["dataset"], max_examples={"train": settings["max_train_examples"]})
    rows, _ = encode_examples(tokenizer, data["train"], is_encoder_decoder=bool(model.config.is_encoder_decoder),
                              max_source_tokens=settings["max_source_tokens"],
                              max_target_tokens=settings["max_target_tokens"])
    steps = len(rows) // settings["batch_size"] * settings["epochs"]
    profile = profile_model(model, collate(tokenizer, rows[:settings["batch_size"]]))
    probe_rows = rows[settings["batch_size"]:settings["batch_size"] * (1 + settings["probe_batches"])]
    probe_batches = [collate(tokenizer, probe_rows[i::settings["probe_batches"]])
                     for i in range(settings["probe_batches"])]
    importance = tensor_importance(model, probe_batches, None, settings["metric"], profile=profile)
    predicted = {}
    for scheme in MODEL_SCHEMES.get(settings["model"], SCHEMES):  # green: what the selection at the start of training is predicted to cost
        predicted[scheme] = parse_scheme(scheme).predicted_ratio(profile, importance)

    # On a shared machine this process gets only part of its threads' cores. Each probe's CPU time over its wall time
    # (per thread) says how much; scaling its times by that share gives what the same thread count takes on an
    # otherwise idle machine ("quiet" seconds). The plan is computed in quiet seconds.
    for p in probes.values():
        p["cpu_share"] = min(1.0, p["cpu_share"])
        p["quiet_step_seconds"] = p["median_step_seconds"] * p["cpu_share"]
        p["quiet_eval_seconds_per_example"] = p["eval_seconds"] * p["cpu_share"] / p["eval_examples"]
        p["quiet_setup_seconds"] = p["setup_seconds"] * p["cpu_share"]
    # step time is about linear in the step's FLOPs ratio: fit t = a + b * ratio on the timed schemes
    ratios = np.array([p["flops_ratio_training"] for p in probes.values()])
    times = np.array([p["quiet_step_seconds"] for p in probes.values()])
    b, a = np.polyfit(ratios, times, 1) if len(set(ratios.round(3))) > 1 else (times.mean(), 0.0)
    eval_per_example = float(np.median([p["quiet_eval_seconds_per_example"] for p in probes.values()]))
    setup = float(np.median([p["quiet_setup_seconds"] for p in probes.values()]))
    cpu_share = float(np.mean([p["cpu_share"] for p in probes.values()]))
    n_eval = sum(len(load_summarization(settings["dataset"], max_examples=settings["max_eval_examples"])[split])
                 for split in ("validation", "test"))
    plan_rows = []
    total = 0.0
    schemes = MODEL_SCHEMES.get(settings["model"], SCHEMES)
    for config in plan({**settings, "lr": settings.get("lr") or 1e-4}, schemes, HEADLINE, SEEDS):
        ratio = predicted[config.scheme]
        seconds = steps * (a + b * ratio) + n_eval * eval_per_example + setup
        total += seconds
        plan_rows.append({"run": config.name, "seed": config.seed, "predicted_ratio": float(ratio),
                          "steps": steps, "seconds": float(seconds)})
    threads = torch.get_num_threads()
    payload = {
        "description": "Time of the full quality benchmark, extrapolated from a few timed steps of some schemes: "
                       "per run, steps x (a + b x FLOPs ratio) + evaluation examples x seconds per example + set-up "
                       "(model load, profiling, per-shape FLOPs measurement). All in quiet seconds: each probe's "
                       "times scaled by the CPU share it got (CPU time / wall time / threads), i.e. the same thread "
                       "count on an otherwise idle machine; loaded_minutes undoes that scaling at the mean share.",
        "settings": settings, "probes": probes, "fit": {"a": float(a), "b": float(b)},
        "probes_timed": timed,
        "eval_seconds_per_example": eval_per_example, "setup_seconds": setup, "steps_per_run": steps,
        "eval_examples_per_run": n_eval, "plan": plan_rows, "threads": threads,
        "quiet_minutes": total / 60, "cpu_share": cpu_share, "loaded_minutes": total / cpu_share / 60,
        "timing": {"context_at_start": context, "context_at_end": timing_context(),
                   "note": contention_note(context, timing_context())},
    }
    table = markdown_table(["run", "seed", "predicted FLOPs ratio", "steps", "estimated time"],
                           [[p["run"], p["seed"], f"{p['predicted_ratio']:.3f}", p["steps"],
                             f"{p['seconds'] / 60:.1f} min"] for p in plan_rows])
    probe_table = markdown_table(
        ["timed scheme", "steps", "median step (measured)", "CPU share", "median step (quiet)",
         "measured FLOPs ratio", "eval s/example (quiet)", "set-up (quiet)"],
        [[s, p["steps"], f"{p['median_step_seconds']:.2f} s", f"{p['cpu_share']:.0%}",
          f"{p['quiet_step_seconds']:.2f} s", f"{p['flops_ratio_training']:.3f}",
          f"{p['quiet_eval_seconds_per_example']:.2f} s", f"{p['quiet_setup_seconds']:.0f} s"]
         for s, p in probes.items()])
    md = (f"## Timed steps ({threads} torch thread(s); timed {timed['date']} by `{timed['command']}`)\n\n"
          f"{probe_table}\n\n"
          f"Fit (quiet): step seconds = {a:.2f} + {b:.2f} x FLOPs ratio; evaluation {eval_per_example:.2f} s per "
          f"generated example (median over the timed schemes), set-up {setup:.0f} s per run.\n\n"
          f"## Estimate: {total / 60:.0f} minutes with {threads} thread(s) on a quiet machine "
          f"({total / cpu_share / 60:.0f} minutes at the load measured, where this process got {cpu_share:.0%} of "
          f"its threads' CPU time)\n\n{table}\n\nMachine load while the steps were timed: {timed['load']}")
    write_results(results_name("quality_estimate", False, settings), payload, md, command_line(), args.results_dir)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, a few steps: a smoke test (~1 minute)")
    parser.add_argument("--estimate", action="store_true",
                        help="time a few steps of the full configuration and estimate the whole benchmark's time")
    parser.add_argument("--results-dir", type=Path, default=None, help="where to write (default bench/results)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the run folders live (default bench/work/quality_<model> or bench/work/quality_quick)")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first (re-run everything)")
    parser.add_argument("--schemes", default=None, help=f"comma-separated subset (default {','.join(SCHEMES)})")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                        help="first seed for every scheme, further seeds for the headline schemes (default 0,1)")
    parser.add_argument("--model", default=None, help="override the model (default smollm2; tiny-gpt2 with --quick)")
    parser.add_argument("--no-zero-shot", action="store_true", help="do not score the untrained model")
    parser.add_argument("--max-train-examples", type=int, default=None, help="override the training subset")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    parser.add_argument("--estimate-steps", type=int, default=8, help="steps timed per scheme with --estimate")
    parser.add_argument("--estimate-schemes", default="full,green:0.5,green:0.7,lora",
                        help="schemes timed with --estimate")
    parser.add_argument("--estimate-from", type=Path, default=None,
                        help="with --estimate: reuse the timed steps of an earlier quality_estimate.json")
    parser.add_argument("--estimate-eval-examples", type=int, default=8,
                        help="validation and test examples generated per timed scheme with --estimate")
    args = parser.parse_args(argv)
    settings = settings_for(args.model, args.quick)
    for key in ("max_train_examples", "epochs"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.estimate:
        return estimate(args, settings)
    return run_benchmark(args, settings)


if __name__ == "__main__":
    sys.exit(main())
