"""The run summary (`summary.json`): totals over the run and over the ranks, written at the end, on a stop or a
failure. Its fields are `records.Summary`; this module computes them.

FLOPs, energy and CO2 are summed over the ranks (`flops_total` is what all processes spent; `flops_per_rank`,
`flops_ratio_per_rank` and `energy.per_rank` break it down); times and peak memory are the largest of any rank.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from ..energy import PHASES, carbon_intensity
from ..records import EnergyReport, Summary, read_jsonl
from . import distributed
from .setup import RunState

__all__ = ["PeakMemory", "held_bytes", "write_summary"]


def write_summary(s: RunState, status: str, step: int, **extra: Any) -> Summary:
    """Write the summary (rank 0) and return it on every rank; under DDP a collective."""
    counters = s.account.counters
    mine = {"flops_training": counters.flops_training, "flops_selection": counters.flops_selection,
            "flops_full": counters.flops_full, "wall_seconds": counters.seconds,
            "selection_seconds": counters.selection_seconds, "eval_seconds": counters.eval_seconds,
            "peak_memory_bytes": s.memory.peak if s.memory is not None else None,
            "ddp_wraps": counters.ddp_wraps, "ddp_wrap_seconds": counters.ddp_wrap_seconds,
            "energy": s.energy.state_dict()["totals"], "energy_method": s.energy.method,
            "grid_source": s.energy.grid["source"], **held_bytes(s)}
    ranks = distributed.all_gather_object(mine, s.dist)
    return distributed.on_main(lambda: _write(s, status, step, ranks, extra), s.dist)


def _write(s: RunState, status: str, step: int, ranks: list[dict], extra: dict) -> Summary:
    c, dist = s.config, s.dist
    evals = [r for r in read_jsonl(s.writer.root / "metrics.jsonl")
             if r["type"] == "eval" and r["split"] == "validation" and "loss" in r]
    per_rank = [r["flops_training"] + r["flops_selection"] for r in ranks]
    training = sum(r["flops_training"] for r in ranks)
    selection = sum(r["flops_selection"] for r in ranks)
    full = sum(r["flops_full"] for r in ranks)
    total = training + selection
    peaks = [r["peak_memory_bytes"] for r in ranks if r["peak_memory_bytes"] is not None]
    summary: Summary = {
        "label": c.name, "scheme": s.scheme.name, "rho": s.scheme.rho, "k": s.scheme.k,
        "model": c.model, "task": c.task, "dataset": c.dataset, "prompt": s.data.prompt, "status": status,
        "steps": step,
        "precision": s.precision.name, "skipped_steps": s.precision.skipped_steps, "attention": s.attention,
        "gradient_checkpointing": c.gradient_checkpointing, "prediction_miss": s.account.prediction_miss,
        "flops_total": total, "flops_training": training, "flops_selection": selection,
        "flops_full_equivalent": full,
        "flops_ratio": total / full if full else None,
        "flops_ratio_training": training / full if full else None,
        **dict.fromkeys(c.task_spec.metrics),
        "val_loss": evals[-1]["loss"] if evals else None,
        "wall_seconds": max(r["wall_seconds"] for r in ranks),
        "selection_seconds": max(r["selection_seconds"] for r in ranks),
        "eval_seconds": max(r["eval_seconds"] for r in ranks),
        "peak_memory_bytes": max(peaks) if peaks else None,
        "trainable_params": s.trainable_params,
        "total_params": sum(p.numel() for p in s.model.parameters()),
        "train_examples": len(s.data.train_rows), "truncated_sources": s.data.truncated,
        "selections": s.selection_index,
        "energy": _energy(ranks, s.energy.grid_intensity) if s.energy.enabled else None,
        "world_size": dist.world_size, "flops_per_rank": per_rank,
        "flops_ratio_per_rank": [f / r["flops_full"] if r["flops_full"] else None for f, r in zip(per_rank, ranks)],
        **extra,
    }
    if dist.enabled:
        summary["distributed"] = {
            "backend": dist.backend, "world_size": dist.world_size, "global_batch": c.batch_size,
            "rank_batches": [len(range(r, c.batch_size, dist.world_size)) for r in range(dist.world_size)],
            "flops_training_per_rank": [r["flops_training"] for r in ranks],
            "flops_selection_per_rank": [r["flops_selection"] for r in ranks],
            "flops_full_per_rank": [r["flops_full"] for r in ranks],
            "wall_seconds_per_rank": [r["wall_seconds"] for r in ranks],
            "peak_memory_bytes_per_rank": [r["peak_memory_bytes"] for r in ranks],
            "strategy": s.strategy,
            "parameter_bytes_per_rank": [r["parameter_bytes"] for r in ranks],
            "optimizer_bytes_per_rank": [r["optimizer_bytes"] for r in ranks],
            "ddp": ("re-wrapped when the trainable set changes (find_unused_parameters=False)" if s.strategy == "ddp"
                    else "not used: FSDP2 shards each block and the root; a re-selection changes requires_grad only"),
            "ddp_wraps": ranks[0]["ddp_wraps"],
            "ddp_wrap_seconds": max(r["ddp_wrap_seconds"] or 0.0 for r in ranks),
        }
    s.writer.write_summary(summary)
    return summary


def held_bytes(s: RunState) -> dict[str, int]:
    """Bytes this rank holds in parameters and in optimizer state now (under FSDP2 its shards; a frozen tensor has
    no optimizer state), counted from the tensors' own storage."""
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    params = {id(p): p for p in s.model.parameters()}.values()
    moments = [v for state in s.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return {"parameter_bytes": sum(local(p).numel() * p.element_size() for p in params),
            "optimizer_bytes": sum(local(v).numel() * v.element_size() for v in moments)}


def _energy(ranks: list[dict], given_intensity: float | None) -> EnergyReport:
    """Energy and CO2 per phase summed over the ranks, with each rank's own, the method and the grid intensity."""
    phases = {phase: {key: sum(r["energy"][phase][key] for r in ranks) for key in ("kwh", "co2_kg")}
              for phase in PHASES}
    methods = sorted({r["energy_method"] for r in ranks if r["energy_method"]})
    return {**phases, "method": " | ".join(methods) or None,
            "grid_g_per_kwh": carbon_intensity(phases, given_intensity), "grid_source": ranks[0]["grid_source"],
            "per_rank": [r["energy"] for r in ranks]}


class PeakMemory:
    """Peak memory while training: CUDA's allocator peak, or on a CPU the peak resident set above the start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None
        self._done = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        process = psutil.Process()
        base = process.memory_info().rss
        self.peak = 0

        def sample() -> None:
            while not self._done.wait(0.05):
                self.peak = max(self.peak, process.memory_info().rss - base)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._done.set()
            self._thread.join()
