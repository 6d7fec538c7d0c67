"""The prepared device check: greencore on a CUDA GPU, in one command of at most about 8 minutes.

Usage (on a machine with a CUDA GPU and greencore set up):
    bench/gpu_check                      # the tests marked gpu, then the runs; writes bench/results/gpu_check.*
    python bench/gpu_check.py --steps 40 --skip-tests

1. The tests marked `gpu` (`pytest -m gpu`): the cost model against FlopCounterMode on CUDA (eager and fused
   attention, bf16), a bf16 training run, DDP over nccl on one process.
2. On the offline default model (smollm2), full fine-tuning and GreenTrainer at rho 0.5 and 0.7, each trained by the
   engine (`greencore.train`) for --steps steps of 8 x 128 tokens in bf16 with the attention kernels auto picks
   (sdpa on CUDA). Per run: the median step time (from the run's metrics; every step of a new batch shape is also
   counted by FlopCounterMode, which the median keeps out), measured FLOPs (of the steps, and with the selection's
   profiling and probe passes, which weigh more in a short run than in a long one), peak memory
   (`torch.cuda.max_memory_allocated`) and energy (measured through NVML where codecarbon can, else marked
   estimated), each also as a ratio to full fine-tuning; the device name and versions.

Without a CUDA device it exits at once, with status 2 and one line saying so. CI never runs it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMES = ("full", "green:0.5", "green:0.7")
RUN = dict(model="smollm2", dataset="stdlib-tldr", batch_size=8, max_source_tokens=96, max_target_tokens=32,
           precision="bf16", attention="auto", device="cuda", eval_rouge=False, max_eval_examples=16, lr=1e-4)
TESTS_TIMEOUT_S = 240


def run_tests() -> dict:
    """`pytest -m gpu`: its exit status and last line."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests/test_gpu.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=TESTS_TIMEOUT_S)
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", flush=True)
    return {"returncode": proc.returncode, "passed": proc.returncode == 0, "last_line": lines[-1] if lines else "",
            "seconds": round(time.time() - started, 1)}


def run_scheme(scheme: str, steps: int, work: Path) -> dict:
    """Train `scheme` for `steps` steps with the engine; its summary's figures and its median step time."""
    from greencore.records import load_run
    from greencore.training import TrainConfig, train

    # pairs to spare (some are longer than the token limits and left out), so the run makes all its steps in one epoch
    config = TrainConfig(scheme=scheme, max_steps=steps, max_train_examples=4 * RUN["batch_size"] * steps, **RUN)
    out = work / scheme.replace(":", "-")
    summary = train(config, out)
    times = [r["time"] for r in load_run(out).metrics if r["type"] == "train"]
    step_seconds = [b - a for a, b in zip(times, times[1:])]  # the first step (warm-up, selection) left out
    energy = summary.get("energy") or {}
    return {"scheme": scheme, "status": summary["status"], "steps": summary["steps"],
            "median_step_seconds": statistics.median(step_seconds) if step_seconds else None,
            "flops_total": summary["flops_total"], "flops_ratio": summary["flops_ratio"],
            "flops_ratio_training": summary["flops_ratio_training"],
            "prediction_miss": summary.get("prediction_miss"), "precision": summary.get("precision"),
            "attention": summary.get("attention"), "peak_memory_bytes": summary.get("peak_memory_bytes"),
            "energy_kwh": (energy.get("training") or {}).get("kwh"), "energy_method": energy.get("method"),
            "trainable_params": summary.get("trainable_params")}


def ratios(rows: list[dict]) -> None:
    """Each run's step time, peak memory and energy as a ratio to full fine-tuning's (FLOPs already have one)."""
    full = rows[0]
    for r in rows:
        for key, name in (("median_step_seconds", "time_ratio"), ("peak_memory_bytes", "memory_ratio"),
                          ("energy_kwh", "energy_ratio")):
            r[name] = r[key] / full[key] if r[key] is not None and full[key] else None


def table(rows: list[dict], tests: dict | None, device: str) -> str:
    from bench.common import markdown_table

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    body = [[r["scheme"], r["status"], r["steps"], fmt(r["median_step_seconds"], ".4f"), fmt(r["time_ratio"], ".3f"),
             fmt(r["flops_ratio_training"], ".3f"), fmt(r["flops_ratio"], ".3f"), fmt(r["prediction_miss"], ".4f"),
             fmt(r["peak_memory_bytes"] and r["peak_memory_bytes"] / 2**20, ".0f"), fmt(r["memory_ratio"], ".3f"),
             fmt(r["energy_ratio"], ".3f"), r["energy_method"] or "-"] for r in rows]
    lines = [f"Device: {device}. Runs: smollm2, batch {RUN['batch_size']} x "
             f"{RUN['max_source_tokens'] + RUN['max_target_tokens']} tokens, {rows[0]['precision'] if rows else '-'}, "
             f"attention {rows[0]['attention'] if rows else '-'}.", ""]
    if tests is not None:
        lines += [f"Tests marked gpu: {'passed' if tests['passed'] else 'FAILED'} ({tests['last_line']})", ""]
    lines.append(markdown_table(["run", "status", "steps", "median step (s)", "time ratio", "FLOPs ratio of the steps",
                                 "FLOPs ratio with selection",
                                 "prediction miss", "peak memory (MiB)", "memory ratio", "energy ratio",
                                 "energy method"], body))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (default 40)")
    parser.add_argument("--skip-tests", action="store_true", help="only the runs")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: bench/results")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): run it on a machine with an "
              "NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    from bench.common import report

    device = torch.cuda.get_device_name(0)
    tests = None if args.skip_tests else run_tests()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        rows = [run_scheme(scheme, args.steps, Path(work)) for scheme in SCHEMES]
    ratios(rows)
    payload = {"device": device, "cuda": torch.version.cuda, "steps": args.steps, "settings": RUN, "tests": tests,
               "runs": rows}
    report("gpu_check", payload, table(rows, tests, device), args.results_dir)
    return 0 if tests is None or tests["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
