"""Per-rank memory of sharded (FSDP2) against replicated (DDP) training on 2 CPU ranks (issue 14).

Usage:
    python bench/bench_fsdp.py            # smollm2, full and green:0.5, each under --strategy ddp and fsdp
    python bench/bench_fsdp.py --quick    # tiny-llama, the same four runs in seconds: a smoke test

Each run is the engine's own `Run` under `torchrun --nproc_per_node 2` (gloo, one thread per rank) on the same global
batches, so the two strategies compute the same steps (same validation loss); per rank it records:
- the bytes held in parameters and in optimizer state at the end, counted from the tensors' own storage (the run
  summary's; under FSDP2 the rank's shards; a frozen tensor has no optimizer state);
- the step peak: the most tensor memory alive at once during the second training step (the optimizer's state
  exists from the first): what the rank holds when the step starts (its parameters and optimizer state, counted from
  the tensors) plus the highest point of the step's allocations minus its frees, in the order torch.profiler's
  memory events (`profile_memory=True`) record them on every thread: the block weights FSDP gathers, gradients,
  activations and communication buffers. A tensor made before the step and freed during it has no free event
  (the figure errs high there); what a rank holds at the start besides its parameters and optimizer state (the
  model's small buffers, a batch) is left out (it errs low there). (bench_memory.py's categorised timeline is not used: its data-flow analysis
  fails now and then on the collectives' threads.) Resident-set readings are not used either: on a CPU they include
  the allocator's freed-but-kept pages (the run summary's RSS growth for green:0.5 under ddp read 45 MiB, less than
  its optimizer state);
- the process's peak resident set from its start to the end of step 1 (`ru_maxrss`, read before the profiler
  starts, whose own records would swell it), which includes the libraries, the set-up, the first selection and
  loading the full model on every rank before it is sharded;
- measured FLOPs per rank and wall time.
Resumable: a finished run's folder (`<results>/fsdp_<model>/<scheme>-<strategy>/`, kept without checkpoints) is read
back. Writes bench/results/fsdp_<model>.{json,md} (fsdp_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS_DIR, command_line, markdown_table, write_results  # noqa: E402

SCHEMES = ("full", "green:0.5")
STRATEGIES = ("ddp", "fsdp")
FULL = {"model": "smollm2", "max_train_examples": 48, "max_steps": 4, "batch_size": 4, "max_source_tokens": 128,
        "max_target_tokens": 32, "max_eval_examples": 4}
QUICK = {"model": "tiny-llama", "max_train_examples": 32, "max_steps": 2, "batch_size": 4, "max_source_tokens": 48,
         "max_target_tokens": 24, "max_eval_examples": 4}
PROFILED_STEP = 2  # the step whose memory is profiled: the optimizer's state exists from step 1
MIB = 2**20


def worker(settings: dict, scheme: str, strategy: str, out: Path) -> None:
    """One rank of a run (under torchrun): train with the engine's loop, profile one step's tensor memory, and
    write this rank's measurements to `out/memory.rank<r>.json`."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from greencore.training import Run, TrainConfig
    from greencore.training.summary import held_bytes

    config = TrainConfig(**settings, scheme=scheme, strategy=strategy, eval_rouge=False, energy=False, device="cpu",
                         keep_checkpoints=1)
    run = Run(config, out)
    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    for event in run.events():  # each train event is yielded after its step; the next step runs on the next pull
        if event.get("type") == "train" and event["step"] == PROFILED_STEP - 1:
            max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the profiler's own use
            held = sum(held_bytes(run.state).values())
            profiler.__enter__()
        elif event.get("type") == "train" and event["step"] == PROFILED_STEP:
            profiler.__exit__(None, None, None)
    changes = sorted((e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    growth = max(itertools.accumulate((n for _, n in changes), initial=0))
    measured = {"held_at_step_start_bytes": held, "step_growth_bytes": growth, "step_peak_bytes": held + growth,
                "max_rss_bytes": max_rss}
    (out / f"memory.rank{run.dist.rank}.json").write_text(json.dumps(measured))


def run(settings: dict, scheme: str, strategy: str, out: Path, quick: bool) -> dict:
    """One 2-rank run, or its record when it finished before: the summary plus each rank's memory."""
    def read() -> dict | None:
        summary = out / "summary.json"
        ranks = [out / f"memory.rank{r}.json" for r in range(2)]
        if not summary.exists() or not all(p.exists() for p in ranks):
            return None
        recorded = json.loads(summary.read_text())
        if recorded.get("status") != "finished":
            return None
        return {**recorded, "memory_per_rank": [json.loads(p.read_text()) for p in ranks]}

    if (done := read()) is not None:
        print(f"  {out.name}: finished earlier, read back", flush=True)
        return done
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           "--worker", scheme, strategy, str(out), *(["--quick"] if quick else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"  {out.name}: running", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{out.name} failed:\n{proc.stderr[-4000:]}")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # records are kept, weights are not committed
    return read()


def row(scheme: str, strategy: str, s: dict) -> dict:
    d = s["distributed"]
    return {"scheme": scheme, "strategy": strategy, "steps": s["steps"],
            "parameter_mib_per_rank": [b / MIB for b in d["parameter_bytes_per_rank"]],
            "optimizer_mib_per_rank": [b / MIB for b in d["optimizer_bytes_per_rank"]],
            "step_peak_mib_per_rank": [m["step_peak_bytes"] / MIB for m in s["memory_per_rank"]],
            "max_rss_mib_per_rank": [m["max_rss_bytes"] / MIB for m in s["memory_per_rank"]],
            "rss_growth_mib_per_rank": [None if b is None else b / MIB for b in d["peak_memory_bytes_per_rank"]],
            "flops_per_rank": s["flops_per_rank"], "flops_ratio": s["flops_ratio"], "val_loss": s["val_loss"],
            "wall_seconds": s["wall_seconds"], "trainable_params": s["trainable_params"]}


def _mib(values: list) -> str:
    return " / ".join(f"{v:,.0f}" for v in values)


def report(settings: dict, rows: list[dict]) -> str:
    """The Markdown table and the comparisons quoted in the READMEs: fsdp against ddp per scheme on rank 0 (held
    memory, step peak, wall time), green under fsdp against full under ddp, and how far rank 1 is from rank 0."""
    table = markdown_table(
        ["scheme", "strategy", "parameters (MiB)", "optimizer state (MiB)", "step peak, all tensors (MiB)",
         "process peak RSS to step 1 (MiB)", "FLOPs ratio to full", "val loss", "wall time"],
        [[r["scheme"], r["strategy"], _mib(r["parameter_mib_per_rank"]), _mib(r["optimizer_mib_per_rank"]),
          _mib(r["step_peak_mib_per_rank"]), _mib(r["max_rss_mib_per_rank"]), f"{r['flops_ratio']:.3f}",
          f"{r['val_loss']:.4f}", f"{r['wall_seconds']:.0f} s"] for r in rows])
    by = {(r["scheme"], r["strategy"]): r for r in rows}

    def against(value: float, reference: float, unit: str) -> str:
        return f"{value:,.0f} against {reference:,.0f} {unit} ({value / reference:.2f}x)"

    def rank0(r: dict, *keys: str) -> float:
        return sum(r[k][0] for k in keys)

    held, peak = ("parameter_mib_per_rank", "optimizer_mib_per_rank"), "step_peak_mib_per_rank"
    notes = []
    for scheme in SCHEMES:
        ddp, fsdp = by[(scheme, "ddp")], by[(scheme, "fsdp")]
        notes.append(f"- {scheme}, rank 0 under fsdp against ddp: parameters and optimizer state "
                     f"{against(rank0(fsdp, *held), rank0(ddp, *held), 'MiB')}; step peak "
                     f"{against(rank0(fsdp, peak), rank0(ddp, peak), 'MiB')}"
                     f"; wall time {against(fsdp['wall_seconds'], ddp['wall_seconds'], 's')}")
    green, full = by[(SCHEMES[1], "fsdp")], by[(SCHEMES[0], "ddp")]
    notes.append(f"- {SCHEMES[1]} under fsdp against {SCHEMES[0]} under ddp, rank 0's step peak: "
                 f"{against(rank0(green, peak), rank0(full, peak), 'MiB')}")
    spread = max(abs(r[k][1] / r[k][0] - 1) for r in rows for k in (peak, "max_rss_mib_per_rank"))
    notes.append(f"- rank 1 differs from rank 0 by at most {spread:.1%} in step peak and process peak RSS")
    return "\n".join([
        f"2 ranks (torchrun, gloo, 1 thread each) on {settings['model']}: {settings['max_steps']} steps of global "
        f"batch {settings['batch_size']} from the same data under each strategy; each cell gives rank 0 / rank 1. "
        "Parameters and optimizer state: the tensors each rank holds at the end. Step peak: the most tensor memory "
        f"alive at once during step {PROFILED_STEP}: the parameters and optimizer state held at its start plus the peak of "
        "its allocations less its frees (torch.profiler's memory events: gathered block weights, gradients, "
        "activations, buffers). Process peak RSS: the resident set at its "
        "highest from the start through step 1 (ru_maxrss; loading, set-up and the first selection included). The FLOPs ratio counts the selection's probes, which a "
        f"{settings['max_steps']}-step run cannot repay.", "", table, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-llama, 2 steps per run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--worker", nargs=3, metavar=("SCHEME", "STRATEGY", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.worker:
        scheme, strategy, out = args.worker
        worker(settings, scheme, strategy, Path(out))
        return 0
    name = "fsdp_quick" if args.quick else f"fsdp_{settings['model']}"
    work = args.results_dir / name
    rows = [row(scheme, strategy, run(settings, scheme, strategy, work / f"{scheme.replace(':', '-')}-{strategy}",
                                      args.quick))
            for scheme in SCHEMES for strategy in STRATEGIES]
    md = report(settings, rows)
    write_results(name, {"settings": settings, "profiled_step": PROFILED_STEP, "rows": rows}, md, command_line(),
                  args.results_dir)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
