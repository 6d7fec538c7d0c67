"""Run directories: what a training run leaves on disk, written so that nothing is ever half-written.

    run/
      .greencore-run     the marker: only a folder that holds it is ever deleted (by --overwrite)
      config.json        the TrainConfig
      profile.json       the TensorProfile the run selected with (`TensorProfile.to_dict`); selections refer to it
      metrics.jsonl      one `TrainRow` per step and one `EvalRow` per evaluation, appended and flushed as they happen
      selections.jsonl   one `SelectionRow` per (re-)selection of trainable tensors
      summary.json       the run's `Summary` (rewritten at the end, or when it is interrupted or fails)
      checkpoints/epoch-N/  model.safetensors, optimizer.safetensors (FSDP2 runs: sharded/, every rank's shards of
                            the weights and optimizer state, by torch.distributed.checkpoint), state.json

The row types below are the schema of these files, written by the training loop and read by the CLI, the app and
the notebooks; they are also the events `Run.events()` yields. JSON files and checkpoints are written to a temporary
name and renamed into place, so a crash leaves the previous version intact. The app and the notebooks follow a run
live by re-reading the .jsonl files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, TypedDict

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from .profile import TensorProfile

__all__ = ["DoneEvent", "EnergyReport", "EvalRow", "PROFILE_FILE", "PhaseEnergy", "RUN_MARKER", "SHARDS", "RunRecord", "RunWriter", "SelectionRow", "Summary",
           "ResumeEvent", "TrainRow", "check_run_directory", "checkpoint_problem", "checkpoints", "is_run_directory",
           "latest_checkpoint", "list_runs", "load_run", "read_json", "remove_run", "write_json_atomic"]

PROFILE_FILE = "profile.json"
RUN_MARKER = ".greencore-run"
SHARDS = "sharded"  # in a checkpoint of a sharded (FSDP2) run: the ranks' torch.distributed.checkpoint folder


def is_run_directory(path: str | os.PathLike) -> bool:
    """Whether greencore wrote a run into `path` (it holds the run marker)."""
    return (Path(path) / RUN_MARKER).is_file()


def check_run_directory(out: str | os.PathLike, *, overwrite: bool) -> None:
    """Refuse, with a message that says what to do, an `out` a new run may not use; touches nothing.

    A run goes only into a new folder, an empty one, or (with `overwrite`) one that holds a greencore run.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose a folder for the run")
    if out.is_dir():
        if is_run_directory(out):
            if not overwrite:
                raise ValueError(f"{out} already holds a run; pass --overwrite to replace it, --resume {out} to "
                                 "continue it, or choose another --out")
        elif any(out.iterdir()):
            raise ValueError(f"{out} is not empty and holds no greencore run: greencore writes a run only into a new "
                             "or empty folder and never deletes files it did not write; choose another --out")
        return
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create --out {out}: {parent} is not a folder this user can write to")


def remove_run(out: str | os.PathLike) -> None:
    """Delete the run in `out`, and only if it is one (`is_run_directory`)."""
    if is_run_directory(out):
        shutil.rmtree(out)


class TrainRow(TypedDict):
    """One optimizer step (`metrics.jsonl`); FLOPs and time are cumulative, selection work included."""

    type: Literal["train"]
    step: int
    epoch: float  # fractional: epoch + (batch index + 1) / steps per epoch
    loss: float
    lr: float
    flops: float
    flops_full: float  # what full fine-tuning would have spent on the same batches
    time: float
    total_steps: int
    energy_kwh: float | None  # training energy so far (selections included), all ranks; None with --no-energy
    co2_kg: float | None
    energy_method: str | None  # this process's (`EnergyMeter.method`): "estimated: ..." or "measured: ..."
    skipped: bool  # fp16 only: the gradients were not finite, so the optimizer did not step (the loss scale fell)


class EvalRow(TypedDict, total=False):
    """An evaluation (`metrics.jsonl`): validation loss after an epoch, or the final scores of one split (ROUGE for
    summarization; accuracy and macro-F1, with the majority class's, for classification)."""

    type: Literal["eval"]
    split: str
    step: int
    epoch: int
    loss: float
    rouge1: float
    rouge2: float
    rougeL: float
    rougeLsum: float
    accuracy: float  # percent
    macro_f1: float  # percent, averaged over every class of the training split
    majority_accuracy: float  # always predicting the training split's commonest class
    majority_macro_f1: float
    energy_kwh: float | None  # evaluation energy of the run so far, all ranks; None with --no-energy
    co2_kg: float | None
    examples: list[dict[str, str]]  # the first predictions with their references (and, classifying, the text)


class SelectionRow(TypedDict, total=False):
    """One (re-)selection (`selections.jsonl`); `mask` and `importance` align with `names`, the tensors of the
    run's `profile` file in backprop order."""

    type: Literal["selection"]
    index: int
    step: int
    epoch: int
    rho: float
    metric: str
    probe: str  # "batches": probe passes of their own (flops_overhead); "step": the gradients of the step it precedes
    profile: str
    names: list[str]
    mask: list[bool]
    importance: list[float]  # the score the selection used
    probe_importance: list[float]  # this selection's probe alone (equal to importance unless importance_ema > 0)
    scored: list[bool]  # which importances were computed: a probe skips the tensors out of rho's reach (they hold 0)
    predicted_ratio: float
    objective: float
    trainable_tensors: int
    flops_overhead: float
    flops_overhead_per_rank: list[float]
    seconds: float


class PhaseEnergy(TypedDict):
    kwh: float
    co2_kg: float


class EnergyReport(TypedDict):
    """`Summary.energy`: codecarbon's offline figures per phase, summed over the ranks (`greencore.energy`)."""

    training: PhaseEnergy  # training steps and selections
    evaluation: PhaseEnergy  # validation losses, generation and ROUGE
    accounting: PhaseEnergy  # measuring full fine-tuning's FLOPs per batch shape (not part of the run's cost)
    method: str | None  # "estimated: ..." or "measured: nvml (GPU), ..." (see EnergyMeter.method)
    grid_g_per_kwh: float | None  # g CO2 per kWh the CO2 was computed with
    grid_source: str
    per_rank: list[dict[str, PhaseEnergy]]


class Summary(TypedDict, total=False):
    """`summary.json`: the run's totals; FLOPs summed over the ranks, times and memory the largest of any rank."""

    label: str
    scheme: str
    rho: float | None
    k: int | None
    model: str
    task: str  # summarization or classification (absent in runs recorded before classification: summarization)
    dataset: str
    prompt: str | None  # the prompt that ran ("auto" resolved: tldr or chat); None for classification
    precision: str  # the precision that ran ("auto" resolved: fp32, bf16 or fp16)
    skipped_steps: int  # fp16: optimizer steps skipped for inf/NaN gradients (0 otherwise)
    attention: str  # the attention kernels that ran: eager or sdpa ("auto" resolved)
    gradient_checkpointing: bool  # activations recomputed in the backward pass (its FLOPs are in the measurement)
    # (measured - predicted) / predicted step FLOPs, of the measured step of the profiled batch shape whose
    # prediction missed most: 0 when the cost model is exact; activation checkpointing's recomputation shows here
    prediction_miss: float | None
    status: str  # finished, stopped, interrupted or failed
    steps: int
    flops_total: float  # training steps plus selection work
    flops_training: float
    flops_selection: float
    flops_full_equivalent: float
    flops_ratio: float | None
    flops_ratio_training: float | None
    # the task's final scores (`Task.metrics`), of the test split; validation_<key> hold the validation split's
    rouge1: float | None  # summarization
    rouge2: float | None
    rougeL: float | None
    rougeLsum: float | None
    accuracy: float | None  # classification, percent
    macro_f1: float | None
    majority_accuracy: float | None  # the training split's commonest class, always predicted: the floor
    majority_macro_f1: float | None
    val_loss: float | None
    wall_seconds: float
    selection_seconds: float
    eval_seconds: float
    peak_memory_bytes: int | None
    energy: EnergyReport | None  # None with --no-energy
    trainable_params: int
    total_params: int
    train_examples: int
    truncated_sources: int
    selections: int
    world_size: int
    flops_per_rank: list[float]
    flops_ratio_per_rank: list[float | None]
    distributed: dict[str, Any]
    error: str


class DoneEvent(TypedDict):
    """The last event of `Run.events()`."""

    type: Literal["done"]
    status: str
    step: int
    summary: Summary


class ResumeEvent(TypedDict):
    """The first event of a resumed run: the checkpoint it continues from and where that left the loop."""

    type: Literal["resume"]
    checkpoint: str
    step: int
    epoch: int
    total_steps: int


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
    """The complete lines of a .jsonl file. A line still being written (no newline yet) is skipped; so is an
    unreadable last line (a write cut off by a kill), with a warning; an unreadable line before it is a ValueError
    naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.endswith("\n")]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path} line {number} is not JSON ({err.msg}): the file is damaged") from None
            warnings.warn(f"{path}: skipped its last line, which is not JSON (a write cut off?)", stacklevel=2)
    return rows


def read_json(path: Path) -> Any:
    """A JSON file's content, or a ValueError that names the file and says what is wrong with it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged: not readable JSON ({err})") from None


class RunWriter:
    """Appends a run's records to its directory. A writer made with `enabled=False` writes nothing (the ranks other
    than 0 of a distributed run: rank 0 alone writes the run directory)."""

    def __init__(self, root: str | os.PathLike, *, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled

    def write_config(self, config: dict) -> None:
        """Start the run directory: the marker first, then the config (both atomic)."""
        if self.enabled:
            write_json_atomic(self.root / RUN_MARKER, {"greencore": "a run directory; --overwrite may delete it"})
            write_json_atomic(self.root / "config.json", config)

    def write_profile(self, profile: "TensorProfile") -> None:
        if self.enabled:
            write_json_atomic(self.root / PROFILE_FILE, profile.to_dict())

    def write_summary(self, summary: Summary) -> None:
        if self.enabled:
            write_json_atomic(self.root / "summary.json", summary)

    def append(self, kind: str, row: TrainRow | EvalRow | SelectionRow) -> None:
        """Append one JSON line to `metrics.jsonl` or `selections.jsonl` and flush it to disk."""
        if not self.enabled:
            return
        with open(self.root / f"{kind}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (used when resuming from a checkpoint taken at that step)."""
        if not self.enabled:
            return
        for kind in ("metrics", "selections"):
            path = self.root / f"{kind}.jsonl"
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{kind}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            os.replace(tmp, path)

    def stage_checkpoint(self, name: str) -> Path:
        """A new hidden folder beside the checkpoints, for the shards the ranks of a sharded run write into before
        `save_checkpoint(..., staged=folder)` completes it (on a file system every rank sees)."""
        folder = self.root / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}."))

    def save_checkpoint(self, name: str, weights: Mapping[str, torch.Tensor],
                        optimizer_state: dict[str, torch.Tensor] | None, state: dict, keep: int,
                        staged: Path | None = None) -> Path:
        """Write checkpoints/<name> atomically (in a hidden folder, renamed when complete), then keep only the newest
        `keep` checkpoints. `weights`: the full model's state dict. A sharded run's optimizer state is not passed:
        it is in the `SHARDS` folder the ranks wrote into `staged`."""
        folder = self.root / "checkpoints"
        if not self.enabled:
            return folder / name
        tmp = staged or self.stage_checkpoint(name)
        try:
            save_file(_unshared(dict(weights)), str(tmp / "model.safetensors"))
            if optimizer_state is not None:
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
    """A run's checkpoints, oldest first; one whose state.json cannot be read sorts last, as the newest, so that
    resuming names it (`latest_checkpoint`) instead of silently going back further."""
    folder = Path(root) / "checkpoints"
    if not folder.exists():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "state.json").exists()]
    return sorted(found, key=lambda p: (_checkpoint_step(p) is None, _checkpoint_step(p) or 0, p.name))


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(json.loads((path / "state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint (a file missing, truncated or not readable), or None when it is intact."""
    path = Path(path)
    if _checkpoint_step(path) is None:
        return "state.json is damaged (not readable JSON with a global_step)"
    sharded = (path / SHARDS).is_dir()
    if sharded and not (path / SHARDS / ".metadata").is_file():
        return f"{SHARDS}/.metadata is missing (the ranks' shards are incomplete)"
    for name in ("model.safetensors",) if sharded else ("model.safetensors", "optimizer.safetensors"):
        try:
            with safe_open(str(path / name), framework="pt"):
                pass
        except FileNotFoundError:
            return f"{name} is missing"
        except Exception as err:  # safetensors reports a truncated or garbled file as its own error type
            return f"{name} is damaged ({err})"
    return None


def latest_checkpoint(root: str | os.PathLike) -> Path:
    """The checkpoint a resume starts from: the newest, which must be intact. A ValueError names what is wrong
    with it and the newest intact one before it."""
    root = Path(root)
    found = checkpoints(root)
    if not found:
        raise ValueError(f"cannot resume {root}: it has no checkpoint yet; start it again with --overwrite")
    problem = checkpoint_problem(found[-1])
    if problem is None:
        return found[-1]
    good = next((p for p in reversed(found[:-1]) if checkpoint_problem(p) is None), None)
    hint = (f"the last good checkpoint is {good} (step {_checkpoint_step(good)}): delete {found[-1]} to resume from it"
            if good else "no earlier checkpoint is intact: start the run again with --overwrite")
    raise ValueError(f"cannot resume {root}: in checkpoint {found[-1]}, {problem}; {hint}")


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
    metrics: list[TrainRow | EvalRow] = field(default_factory=list)
    selections: list[SelectionRow] = field(default_factory=list)
    summary: Summary | None = None
    damaged: str | None = None  # what is wrong with a run `list_runs` could not read

    @property
    def label(self) -> str:
        return (self.summary or {}).get("label") or self.config.get("label") or self.path.name

    @property
    def train_rows(self) -> list[TrainRow]:
        return [r for r in self.metrics if r["type"] == "train"]

    @property
    def eval_rows(self) -> list[EvalRow]:
        return [r for r in self.metrics if r["type"] == "eval"]

    @property
    def reselects(self) -> bool:
        """Whether the run's scheme chooses its tensors while training (so it records selections)."""
        from .schemes import parse_scheme

        return parse_scheme(self.config["scheme"], rho=self.config.get("rho"), k=self.config.get("k")).reselects

    def profile(self) -> "TensorProfile":
        """The profile the run selected with (its per-tensor FLOPs and layout), read from `profile.json`."""
        from .profile import TensorProfile

        path = self.path / PROFILE_FILE
        if not path.exists():
            raise ValueError(f"{self.path} has no {PROFILE_FILE}: it was written by an older greencore, which did not "
                             "save the profile a run selected with")
        return TensorProfile.from_dict(json.loads(path.read_text()))


def load_run(path: str | os.PathLike) -> RunRecord:
    """Read a run directory (a finished, running or interrupted run)."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise ValueError(f"{path} is not a greencore run directory (no config.json)")
    summary_path = path / "summary.json"
    config = read_json(config_path)
    if not isinstance(config, dict) or "scheme" not in config:
        raise ValueError(f"{config_path} is damaged: it holds no run configuration")
    return RunRecord(
        path=path,
        config=config,
        metrics=read_jsonl(path / "metrics.jsonl"),
        selections=read_jsonl(path / "selections.jsonl"),
        summary=read_json(summary_path) if summary_path.exists() else None,
    )


def list_runs(root: str | os.PathLike) -> list[RunRecord]:
    """Every run directory at or below `root` (for example a `greencore compare` output folder). A damaged run is
    listed too, with no rows and `damaged` saying which file is wrong, so one bad run hides no other."""
    root = Path(root)
    if not root.exists():
        return []
    records = []
    for p in sorted(root.rglob("config.json")):
        if "checkpoints" in p.parts:
            continue
        try:
            records.append(load_run(p.parent))
        except ValueError as err:
            records.append(RunRecord(path=p.parent, config={}, damaged=str(err)))
    return records
