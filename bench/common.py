"""Shared output for benchmarks: every result is a JSON file plus a Markdown table, both stamped with where and
when it was measured, so numbers quoted elsewhere can be traced to a machine and a command."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def report(name: str, payload: dict, table_md: str, results_dir: Path | None = None) -> int:
    """Write the results of this command (see `write_results`), print the table and where it went; exit status 0."""
    paths = write_results(name, payload, table_md, command_line(), results_dir)
    print(table_md)
    print("wrote", *paths)
    return 0


def write_results(
    name: str, payload: dict, table_md: str, command: str, results_dir: Path | None = None
) -> tuple[Path, Path]:
    """Write `{name}.json` (payload plus a `meta` block) and `{name}.md` (title, meta, table) atomically.

    Returns the two paths. `results_dir` defaults to bench/results.
    """
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"name={name!r} must be a plain file stem such as 'selector' (no path separators)")
    out = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(command)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    _write_atomic(json_path, json.dumps({**payload, "meta": meta}, indent=2) + "\n")
    lines = [f"# Benchmark: {name}", ""]
    lines += [f"- {key}: {value}" for key, value in _flatten(meta)]
    _write_atomic(md_path, "\n".join(lines) + "\n\n" + table_md.rstrip() + "\n")
    return json_path, md_path


def zero_shot_rouge(config: Any) -> dict[str, float]:
    """ROUGE of the untrained model of a `TrainConfig` on its validation pairs, generated as a run's final
    evaluation generates them (same prompt, lengths and beams)."""
    return zero_shot_scores(config, splits=("validation",), loss=False)["validation"]


def zero_shot_scores(config: Any, splits: tuple[str, ...] = ("validation", "test"), loss: bool = True) -> dict:
    """The untrained model of a `TrainConfig` scored as a run's evaluation scores a trained one: the validation loss
    on the same encoded rows (`loss`), and per split in `splits` ROUGE plus the predictions, generated with the
    same prompt, lengths and beams."""
    from greencore.evaluate import generate_summaries, rouge, validation_loss
    from greencore.models import load_model
    from greencore.training.setup import load_data

    model, tokenizer = load_model(config.model, seed=config.seed, device=config.device)  # in eval mode
    data = load_data(config, tokenizer, bool(model.config.is_encoder_decoder), device=model.device)
    scores: dict[str, Any] = {}
    if loss:
        scores["val_loss"] = validation_loss(model, tokenizer, data.val_rows, batch_size=config.batch_size)
    for split in splits:
        split_data = data.eval_data[split]
        predictions = generate_summaries(model, tokenizer, list(split_data["source"]),
                                         max_source_tokens=config.max_source_tokens,
                                         max_new_tokens=config.max_target_tokens, num_beams=config.num_beams,
                                         prompt=data.prompt)
        scores[split] = {**rouge(predictions, list(split_data["target"])), "predictions": predictions,
                         "references": list(split_data["target"])}
    return scores


def run_meta(command: str) -> dict[str, Any]:
    """Date (UTC), machine, library versions and the command that produced a result."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "ram_gib": _ram_gib(),
        },
        "versions": {
            "python": platform.python_version(),
            **{pkg: _version(pkg) for pkg in ("torch", "numpy", "transformers")},
        },
        "command": command,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _flatten(meta: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in meta.items():
        if isinstance(value, dict):
            rows.append((key, ", ".join(f"{k}={v}" for k, v in value.items())))
        else:
            rows.append((key, f"`{value}`" if key == "command" else value))
    return rows


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def command_line() -> str:
    """The command that started this process, for the `command` field."""
    return " ".join([Path(sys.executable).name, *sys.argv])


def step_arguments(parser: argparse.ArgumentParser, quick: str, quick_batch_size: int) -> None:
    """The options of a benchmark of one model's training steps: --quick (described by `quick`), --results-dir,
    --model (smollm2; tiny-gpt2 with --quick), --batch-size (8; `quick_batch_size` with --quick), --seq-len (128;
    64 with --quick)."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--results-dir", type=Path, default=None, help="where to write (default bench/results)")
    parser.add_argument("--model", default=None, help="default smollm2 (tiny-gpt2 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default 8 ({quick_batch_size} with --quick)")
    parser.add_argument("--seq-len", type=int, default=None, help="default 128 (64 with --quick)")


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table; cells are written with str()."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages (None where the platform has none): timings taken while the load
    exceeds the core count were measured on a contended machine."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def timing_context() -> dict[str, Any]:
    """What a timing depends on besides the code: torch's thread count, OMP_NUM_THREADS, cores and load now."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
    }


def contention_note(before: dict[str, Any], after: dict[str, Any]) -> str:
    """One line saying whether the machine was busy while timings were taken (load average above the cores)."""
    cores = before.get("cpu_count") or 1
    loads = [ctx["load_average"][0] for ctx in (before, after) if ctx.get("load_average")]
    threads = before.get("torch_threads")
    if not loads:
        return f"torch threads={threads}; load average unknown"
    busy = max(loads) > cores
    state = "CONTENDED (load above the core count): timings are noisy and slower than on a quiet machine" if busy \
        else "quiet enough (load at or below the core count)"
    return f"torch threads={threads}, {cores} cores, 1-min load average {min(loads):.2f}-{max(loads):.2f}: {state}"


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    import statistics

    return float(statistics.median(values))
