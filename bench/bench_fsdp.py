"""Per-rank memory of sharded (FSDP2) against replicated (DDP) training on 2 CPU ranks (issue 14).

Usage:
    python bench/bench_fsdp.py            # smollm2, full and green:0.5, each under --strategy ddp and fsdp
    python bench/bench_fsdp.py --quick    # tiny-llama, the same four runs in seconds: a smoke test

Each run is `greencore train` under `torchrun --nproc_per_node 2` (gloo, one thread per rank) on the same global
batches, so the two strategies compute the same steps; the numbers come from the run summaries:
- the bytes each rank holds in parameters and in optimizer state at the end, counted from the tensors' own storage
  (under FSDP2 the rank's shards; a frozen tensor has no optimizer state);
- the peak of each rank's resident set during the training loop above what it held when the loop began, sampled
  every 50 ms (`summary.PeakMemory`): gradients, the gathered weights of the blocks being computed, activations and
  the allocator's caching, as the operating system sees them;
- measured FLOPs per rank and wall time.
Resumable: a finished run's folder (`<results>/fsdp_<model>/<scheme>-<strategy>/`, kept without checkpoints) is read
back. Writes bench/results/fsdp_<model>.{json,md} (fsdp_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
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
MIB = 2**20


def run(settings: dict, scheme: str, strategy: str, out: Path) -> dict:
    """One 2-rank run (or its recorded summary when it finished before)."""
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "finished":
        print(f"  {out.name}: finished earlier, read back", flush=True)
        return json.loads(summary.read_text())
    shutil.rmtree(out, ignore_errors=True)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "greencore.cli", "train", "--out", str(out), "--scheme", scheme, "--strategy", strategy, "--no-rouge",
           "--no-energy", "--device", "cpu", "--keep-checkpoints", "1", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"  {out.name}: running", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{out.name} failed:\n{proc.stderr[-4000:]}")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # records are kept, weights are not committed
    return json.loads(summary.read_text())


def row(scheme: str, strategy: str, s: dict) -> dict:
    d = s["distributed"]
    return {"scheme": scheme, "strategy": strategy, "steps": s["steps"],
            "parameter_mib_per_rank": [b / MIB for b in d["parameter_bytes_per_rank"]],
            "optimizer_mib_per_rank": [b / MIB for b in d["optimizer_bytes_per_rank"]],
            "peak_rss_growth_mib_per_rank": [None if b is None else b / MIB for b in d["peak_memory_bytes_per_rank"]],
            "flops_per_rank": s["flops_per_rank"], "flops_ratio": s["flops_ratio"], "val_loss": s["val_loss"],
            "wall_seconds": s["wall_seconds"], "trainable_params": s["trainable_params"]}


def _mib(values: list) -> str:
    return " / ".join("-" if v is None else f"{v:,.0f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-llama, 2 steps per run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    name = "fsdp_quick" if args.quick else f"fsdp_{settings['model']}"
    work = args.results_dir / name
    rows = []
    for scheme in SCHEMES:
        for strategy in STRATEGIES:
            summary = run(settings, scheme, strategy, work / f"{scheme.replace(':', '-')}-{strategy}")
            rows.append(row(scheme, strategy, summary))
    by = {(r["scheme"], r["strategy"]): r for r in rows}
    table = markdown_table(
        ["scheme", "strategy", "parameters per rank (MiB)", "optimizer state per rank (MiB)",
         "peak RSS growth while training, per rank (MiB)", "FLOPs ratio to full", "val loss", "wall time"],
        [[r["scheme"], r["strategy"], _mib(r["parameter_mib_per_rank"]), _mib(r["optimizer_mib_per_rank"]),
          _mib(r["peak_rss_growth_mib_per_rank"]), f"{r['flops_ratio']:.3f}", f"{r['val_loss']:.4f}",
          f"{r['wall_seconds']:.0f} s"] for r in rows])
    held = {key: r["parameter_mib_per_rank"][0] + r["optimizer_mib_per_rank"][0] for key, r in by.items()}
    notes = [f"- {scheme}: rank 0 holds {held[(scheme, 'fsdp')]:,.0f} MiB of parameters and optimizer state under "
             f"fsdp against {held[(scheme, 'ddp')]:,.0f} MiB under ddp "
             f"({held[(scheme, 'fsdp')] / held[(scheme, 'ddp')]:.2f}x)" for scheme in SCHEMES]
    md = "\n".join([
        f"2 ranks (torchrun, gloo, 1 thread each) on {settings['model']}: {settings['max_steps']} steps of global "
        f"batch {settings['batch_size']} from the same data under each strategy. Parameters and optimizer state are "
        "counted from the tensors each rank holds at the end; the peak RSS growth is the resident set's rise during "
        "the training loop (sampled every 50 ms), which includes allocator caching.", "", table, "", *notes])
    write_results(name, {"settings": settings, "rows": rows}, md, command_line(), args.results_dir)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
