"""Run directories: what a training run leaves on disk, written so that nothing is ever half-written.

    run/
      config.json        the TrainConfig
      metrics.jsonl      one line per logged step and per evaluation, appended and flushed as they happen
      selections.jsonl   one line per (re-)selection of trainable tensors
      summary.json       the run's totals (rewritten at the end, or when it is interrupted or fails)
      checkpoints/epoch-N/  model.safetensors, optimizer.safetensors, state.json

JSON files and checkpoints are written to a temporary name and renamed into place, so a crash leaves the previous
version intact. The app and the notebooks follow a run live by re-reading the .jsonl files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["RunRecord", "RunWriter", "list_runs", "load_run", "write_json_atomic"]


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The complete lines of a .jsonl file (a line still being written is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                rows.append(json.loads(line))
    return rows


class RunWriter:
    """Appends a run's records to its directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict) -> None:
        write_json_atomic(self.root / "config.json", config)

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.root / "summary.json", summary)

    def append(self, kind: str, row: dict) -> None:
        """Append one JSON line to `metrics.jsonl` or `selections.jsonl` and flush it to disk."""
        with open(self.root / f"{kind}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (used when resuming from a checkpoint taken at that step)."""
        for kind in ("metrics", "selections"):
            path = self.root / f"{kind}.jsonl"
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{kind}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            os.replace(tmp, path)

    def save_checkpoint(self, name: str, model: torch.nn.Module, optimizer_state: dict[str, torch.Tensor],
                        state: dict, keep: int) -> Path:
        """Write checkpoints/<name> atomically, then keep only the newest `keep` checkpoints."""
        folder = self.root / "checkpoints"
        folder.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}."))
        try:
            save_file(_unshared(model.state_dict()), str(tmp / "model.safetensors"))
            save_file({k: v.contiguous() for k, v in optimizer_state.items()}, str(tmp / "optimizer.safetensors"))
            write_json_atomic(tmp / "state.json", state)
            final = folder / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in checkpoints(self.root)[:-keep]:
            shutil.rmtree(old)
        return final


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): store each storage once."""
    seen: dict[tuple, str] = {}
    out = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen[key] = name
        out[name] = t.detach().contiguous()
    return out


def checkpoints(root: str | os.PathLike) -> list[Path]:
    """A run's checkpoints, oldest first."""
    folder = Path(root) / "checkpoints"
    if not folder.exists():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "state.json").exists()]
    return sorted(found, key=lambda p: json.loads((p / "state.json").read_text())["global_step"])


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """Load weights into `model` and return (optimizer tensors, state)."""
    path = Path(path)
    weights = load_file(str(path / "model.safetensors"), device=str(next(model.parameters()).device))
    expected = model.state_dict()
    unexpected = weights.keys() - expected.keys()
    model.load_state_dict(weights, strict=False)
    loaded = {expected[n].data_ptr() for n in weights if n in expected}
    missing = [n for n, t in expected.items() if n not in weights and t.data_ptr() not in loaded]
    if unexpected or missing:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    return load_file(str(path / "optimizer.safetensors")), json.loads((path / "state.json").read_text())


@dataclass
class RunRecord:
    """Everything a run directory holds, read back."""

    path: Path
    config: dict
    metrics: list[dict] = field(default_factory=list)
    selections: list[dict] = field(default_factory=list)
    summary: dict | None = None

    @property
    def label(self) -> str:
        return (self.summary or {}).get("label") or self.config.get("label") or self.path.name


def load_run(path: str | os.PathLike) -> RunRecord:
    """Read a run directory (a finished, running or interrupted run)."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise ValueError(f"{path} is not a greencore run directory (no config.json)")
    summary_path = path / "summary.json"
    return RunRecord(
        path=path,
        config=json.loads(config_path.read_text()),
        metrics=read_jsonl(path / "metrics.jsonl"),
        selections=read_jsonl(path / "selections.jsonl"),
        summary=json.loads(summary_path.read_text()) if summary_path.exists() else None,
    )


def list_runs(root: str | os.PathLike) -> list[RunRecord]:
    """Every run directory at or below `root` (for example a `greencore compare` output folder)."""
    root = Path(root)
    if not root.exists():
        return []
    return [load_run(p.parent) for p in sorted(root.rglob("config.json")) if "checkpoints" not in p.parts]
