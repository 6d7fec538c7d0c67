"""The training engine: one harness for GreenTrainer and every baseline, with honest FLOPs accounting.

Every scheme gets the same data, optimizer (AdamW over all candidate tensors; frozen ones simply get no gradient),
linear schedule and evaluation. FLOPs are measured, not estimated: the first step of each distinct (trainable set,
batch shape) runs under `FlopCounterMode` and later steps with the same key reuse that count; what full fine-tuning
would have spent on the same batches is measured once per batch shape. GreenTrainer's probe passes and the profiling
pass are added to its total.

Use it as `train(config, out)`, or iterate `Run(config, out).events()` to follow a run as it happens (the app and
the notebooks do), and call `Run.stop()` from another thread to end it cleanly with a checkpoint.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from .data import batches, collate, encode_examples, load_summarization, pad_token_id
from .evaluate import generate_summaries, rouge, validation_loss
from .flops import flop_counter, measure_training_flops, model_loss, rng_devices
from .importance import IMPORTANCE_METRICS, tensor_importance
from .models import load_model, resolve_device
from .profile import TensorProfile, profile_model
from .records import RunWriter, checkpoints, load_checkpoint, read_jsonl
from .schemes import SchemeSpec, parse_scheme, static_trainable, wrap_peft
from .select import select_tensors
from .trainable import set_trainable

__all__ = ["Run", "TrainConfig", "TrainingError", "train"]

PAD_MULTIPLE = 16  # batches are padded to a multiple of this, so few distinct shapes need measuring


class TrainingError(ValueError):
    """A run could not go on (for example its loss became NaN); the message says what to change."""


@dataclass
class TrainConfig:
    """Everything that defines a run. The defaults are the offline default: `minilm` on `stdlib-tldr`."""

    model: str = "minilm"
    dataset: str = "stdlib-tldr"
    scheme: str = "green"
    rho: float | None = 0.5
    interval: int = 1
    interval_unit: str = "epoch"
    probe_batches: int = 2
    metric: str = "taylor"
    k: int = 2
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    prefix_tokens: int = 20
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_source_tokens: int = 128
    max_target_tokens: int = 32
    max_train_examples: int | None = None
    max_eval_examples: int | None = 100
    num_beams: int = 2
    eval_rouge: bool = True
    seed: int = 0
    device: str = "auto"
    source_field: str | None = None
    target_field: str | None = None
    keep_checkpoints: int = 2
    label: str | None = None

    def __post_init__(self) -> None:
        self.spec  # validates the scheme and its parameter
        checks = [
            (self.interval >= 1, f"interval={self.interval} must be >= 1"),
            (self.interval_unit in ("epoch", "step"), f"interval_unit={self.interval_unit!r}: use 'epoch' or 'step'"),
            (self.probe_batches >= 1, f"probe_batches={self.probe_batches} must be >= 1"),
            (self.metric in IMPORTANCE_METRICS, f"metric={self.metric!r}: use one of {', '.join(IMPORTANCE_METRICS)}"),
            (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps={self.max_steps} must be >= 1"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr={self.lr} must be a positive number"),
            (self.num_beams >= 1, f"num_beams={self.num_beams} must be >= 1"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints={self.keep_checkpoints} must be >= 1"),
            (self.max_train_examples is None or self.max_train_examples >= 1,
             f"max_train_examples={self.max_train_examples} must be >= 1"),
            (self.max_eval_examples is None or self.max_eval_examples >= 1,
             f"max_eval_examples={self.max_eval_examples} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def spec(self) -> SchemeSpec:
        return parse_scheme(self.scheme, rho=self.rho, k=self.k)

    @property
    def name(self) -> str:
        return self.label or self.spec.label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def train(config: TrainConfig, out: str | Path, *, overwrite: bool = False) -> dict:
    """Run to the end and return the summary (also written to `out/summary.json`)."""
    run = Run(config, out, overwrite=overwrite)
    for _ in run.events():
        pass
    return run.summary


class Run:
    """One training run writing to its directory; iterate `events()` to drive it.

    `Run.resume(out)` continues an interrupted run from its last checkpoint; under the same seed the result is
    the same as that of an uninterrupted run.
    """

    def __init__(self, config: TrainConfig, out: str | Path, *, overwrite: bool = False, _resume: bool = False):
        self.config = config
        self.out = Path(out)
        self.summary: dict = {}
        self.status = "created"
        self._stop = threading.Event()
        self._stop_reason = "stopped"
        self._resume = _resume
        if not _resume:
            _claim_directory(self.out, config, overwrite)

    @classmethod
    def resume(cls, out: str | Path) -> "Run":
        """A run that continues the interrupted run in `out` from its latest checkpoint."""
        out = Path(out)
        record = out / "config.json"
        if not record.exists():
            raise ValueError(f"cannot resume {out}: it holds no run (no config.json)")
        if not checkpoints(out):
            raise ValueError(f"cannot resume {out}: it has no checkpoint yet; start it again with --overwrite")
        import json

        return cls(TrainConfig.from_dict(json.loads(record.read_text())), out, _resume=True)

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to stop after the current step; it writes a checkpoint and a summary marked `reason`
        ("stopped", or "interrupted" for Ctrl-C). Safe to call from another thread or a signal handler."""
        self._stop_reason = reason
        self._stop.set()

    def events(self) -> Iterator[dict]:
        """Train, yielding each event (train step, eval, selection, checkpoint, done) as it is recorded."""
        self.status = "running"
        try:
            yield from _Trainer(self).run()
        except BaseException:
            if self.status == "running":
                self.status = "failed"
            raise


def _claim_directory(out: Path, config: TrainConfig, overwrite: bool) -> None:
    existing = out / "config.json"
    if existing.exists() and not overwrite:
        raise ValueError(f"{out} already holds a run; pass --overwrite to replace it, --resume {out} to continue it, "
                         "or choose another --out")
    if overwrite and out.exists():
        import shutil

        if existing.exists() or not any(out.iterdir()):
            shutil.rmtree(out)
        else:
            raise ValueError(f"{out} exists and is not a greencore run: refusing to delete it; choose another --out")


class _Trainer:
    """The state of one run while it trains (kept out of `Run` so `Run` stays a small handle)."""

    def __init__(self, handle: Run) -> None:
        self.handle = handle
        self.config = config = handle.config
        self.spec = config.spec
        self.writer = RunWriter(handle.out)
        self.device = resolve_device(config.device)
        _seed_everything(config.seed)
        self.model, self.tokenizer = load_model(config.model, seed=config.seed, device=self.device)
        self.is_enc_dec = bool(self.model.config.is_encoder_decoder)
        self._load_data()
        self.counters = {"flops_training": 0.0, "flops_full": 0.0, "flops_selection": 0.0,
                         "train_seconds": 0.0, "eval_seconds": 0.0, "selection_seconds": 0.0}
        self.step_flops: dict[tuple, tuple[int, int]] = {}
        self.full_flops: dict[tuple, int] = {}
        self.selection_index = 0
        self.trainable_params = 0
        self._prepare_model()

    # ------------------------------------------------------------------------------------------------- set-up

    def _load_data(self) -> None:
        c = self.config
        limits = {"train": c.max_train_examples, "validation": c.max_eval_examples, "test": c.max_eval_examples}
        data = load_summarization(c.dataset, source_field=c.source_field, target_field=c.target_field,
                                  max_examples={k: v for k, v in limits.items() if v is not None})
        encode = dict(is_encoder_decoder=self.is_enc_dec, max_source_tokens=c.max_source_tokens,
                      max_target_tokens=c.max_target_tokens)
        self.train_rows, self.truncated = encode_examples(self.tokenizer, data["train"], **encode)
        self.val_rows, _ = encode_examples(self.tokenizer, data["validation"], **encode)
        if len(self.train_rows) < c.batch_size:
            raise ValueError(f"the training split has {len(self.train_rows)} usable examples, fewer than one batch "
                             f"of {c.batch_size}: use more data or a smaller --batch-size")
        if not self.val_rows:
            raise ValueError("the validation split is empty after encoding: use a data set with more examples")
        self.eval_data = {split: data[split] for split in ("validation", "test")}
        self.steps_per_epoch = len(self.train_rows) // c.batch_size
        total = self.steps_per_epoch * c.epochs
        self.total_steps = min(total, c.max_steps) if c.max_steps else total

    def _prepare_model(self) -> None:
        c = self.config
        self.model.train()
        probe = self._to_device(self._bucket(collate(self.tokenizer, self.train_rows[:c.batch_size])))
        base_profile = profile_model(self.model, probe)
        self.full_names = list(base_profile.names)
        if self.spec.name in ("lora", "prefix"):
            self.model = wrap_peft(self.model, self.spec, base_profile, lora_r=c.lora_r, lora_alpha=c.lora_alpha,
                                   lora_dropout=c.lora_dropout, prefix_tokens=c.prefix_tokens)
            self.full_names = [n for n, p in self.model.named_parameters() if not p.requires_grad]
            try:
                self.profile = profile_model(self.model, probe)
            except Exception as err:
                raise ValueError(f"{self.spec.name} does not run on {c.model}: {err}") from err
        else:
            self.profile = base_profile
        if self.spec.name in ("green", "random"):
            self.counters["flops_selection"] += self.profile.t_fp  # the profiling forward pass is GreenTrainer's cost
            if self.spec.rho < self.profile.min_rho:
                raise ValueError(f"rho={self.spec.rho} is below the feasible minimum {self.profile.min_rho:.3f} for "
                                 f"{c.model} (the forward pass alone costs that much); choose rho >= "
                                 f"{math.ceil(self.profile.min_rho * 1000) / 1000:.3f}")
            self.trainable = list(self.profile.names)
        else:
            self.trainable = static_trainable(self.spec, self.profile)
        params = dict(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW([params[n] for n in self.profile.names], lr=c.lr,
                                           weight_decay=c.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, 0, self.total_steps)
        set_trainable(self.model, self.trainable, self.optimizer, candidates=self.profile.names)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _bucket(self, batch: dict) -> dict:
        """Pad a batch's sequence lengths up to a multiple of PAD_MULTIPLE (fewer distinct shapes to measure)."""
        pad = pad_token_id(self.tokenizer)
        out = {}
        for key, t in batch.items():
            width = -(-t.shape[1] // PAD_MULTIPLE) * PAD_MULTIPLE
            fill = -100 if key == "labels" else (0 if key == "attention_mask" else pad)
            out[key] = torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)
        return out

    # ------------------------------------------------------------------------------------------------- the loop

    def run(self) -> Iterator[dict]:
        c = self.config
        start_epoch, skip, step = 0, 0, 0
        if self.handle._resume:
            start_epoch, skip, step = self._restore()
        else:
            self.writer.write_config(c.to_dict())
        self.started = time.time()
        self.memory = _PeakMemory(self.device)
        with self.memory:
            for epoch in range(start_epoch, c.epochs):
                order = batches(self.tokenizer, self.train_rows, batch_size=c.batch_size, shuffle=True,
                                seed=c.seed * 1_000_003 + epoch, drop_last=True)
                for index, batch in enumerate(order):
                    if index < skip:
                        continue
                    if self._selection_due(epoch, index, step):
                        yield self._select(epoch, step)
                    yield self._step(self._to_device(self._bucket(batch)), epoch, index, step)
                    step += 1
                    if self.handle._stop.is_set() or step >= self.total_steps:
                        break
                skip = 0
                finished_epoch = index + 1 >= self.steps_per_epoch
                if self.handle._stop.is_set() and not finished_epoch:
                    yield self._checkpoint(f"step-{step}", epoch, index + 1, step)
                    yield self._finish(self.handle._stop_reason, step)
                    return
                yield self._evaluate(epoch + 1, step)
                yield self._checkpoint(f"epoch-{epoch + 1}", epoch + 1, 0, step)
                if self.handle._stop.is_set():
                    yield self._finish(self.handle._stop_reason, step)
                    return
                if step >= self.total_steps:
                    break
        yield from self._final(step)

    def _selection_due(self, epoch: int, index: int, step: int) -> bool:
        if self.spec.name not in ("green", "random"):
            return False
        if self.config.interval_unit == "step":
            return step % self.config.interval == 0
        return index == 0 and epoch % self.config.interval == 0

    def _select(self, epoch: int, step: int) -> dict:
        c = self.config
        started = time.perf_counter()
        order = batches(self.tokenizer, self.train_rows, batch_size=c.batch_size, shuffle=True,
                        seed=c.seed * 7_919 + self.selection_index + 1, drop_last=True)
        probes = [self._to_device(self._bucket(b)) for _, b in zip(range(c.probe_batches), order)]
        metric = "random" if self.spec.name == "random" else c.metric
        with flop_counter() as counter:
            importance = tensor_importance(self.model, probes, self.optimizer, metric, profile=self.profile,
                                           seed=c.seed + self.selection_index)
        selection = select_tensors(self.profile, importance, self.spec.rho)
        set_trainable(self.model, selection.trainable, self.optimizer, candidates=self.profile.names)
        self.trainable = selection.trainable
        seconds = time.perf_counter() - started
        self.counters["flops_selection"] += counter.get_total_flops()
        self.counters["selection_seconds"] += seconds
        row = {"type": "selection", "index": self.selection_index, "step": step, "epoch": epoch, "rho": self.spec.rho,
               "metric": metric, "names": self.profile.names, "mask": selection.mask.tolist(),
               "importance": [float(x) for x in importance], "predicted_ratio": selection.predicted_ratio,
               "objective": selection.objective, "trainable_tensors": len(selection.trainable),
               "flops_overhead": counter.get_total_flops(), "seconds": seconds}
        self.writer.append("selections", row)
        self.selection_index += 1
        return row

    def _step(self, batch: dict, epoch: int, index: int, step: int) -> dict:
        c = self.config
        shape = tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()))
        key = (tuple(self.trainable), shape)
        self.model.train()
        started = time.perf_counter()
        if key in self.step_flops:
            loss = self._forward(batch, step, epoch)
            loss.backward()
        else:
            with flop_counter() as fwd:
                loss = self._forward(batch, step, epoch)
            with flop_counter() as bwd:
                loss.backward()
            self.step_flops[key] = (fwd.get_total_flops(), bwd.get_total_flops())
        params = [p for p in self.optimizer.param_groups[0]["params"] if p.grad is not None]
        if c.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.counters["train_seconds"] += time.perf_counter() - started
        if shape not in self.full_flops:
            with _adapters_disabled(self.model):
                self.full_flops[shape] = measure_training_flops(self.model, batch, self.full_names)["total"]
        self.counters["flops_training"] += sum(self.step_flops[key])
        self.counters["flops_full"] += self.full_flops[shape]
        self.trainable_params = max(self.trainable_params, _count_params(self.model, self.trainable))
        row = {"type": "train", "step": step + 1, "epoch": epoch + (index + 1) / self.steps_per_epoch,
               "loss": loss.item(), "lr": lr, "flops": self._flops_total(), "flops_full": self.counters["flops_full"],
               "time": self.counters["train_seconds"] + self.counters["selection_seconds"],
               "total_steps": self.total_steps}
        self.writer.append("metrics", row)
        return row

    def _forward(self, batch: dict, step: int, epoch: int) -> torch.Tensor:
        loss = model_loss(self.model, batch)
        if not torch.isfinite(loss):
            value = loss.item()
            last = checkpoints(self.handle.out)
            kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            self._write_summary("failed", step, error=f"loss became {value} at step {step + 1}")
            raise TrainingError(f"the loss became {value} at step {step + 1} (epoch {epoch + 1}); {kept}. "
                                f"Lower the learning rate (now {self.config.lr}) and start again")
        return loss

    def _flops_total(self) -> float:
        return self.counters["flops_training"] + self.counters["flops_selection"]

    def _evaluate(self, epoch: int, step: int) -> dict:
        started = time.perf_counter()
        with torch.random.fork_rng(devices=rng_devices(self.model.parameters())):
            loss = validation_loss(self.model, self.tokenizer, self.val_rows, batch_size=self.config.batch_size)
        self.counters["eval_seconds"] += time.perf_counter() - started
        row = {"type": "eval", "split": "validation", "step": step, "epoch": epoch, "loss": loss}
        self.writer.append("metrics", row)
        return row

    # ------------------------------------------------------------------------------------------ checkpoints

    def _checkpoint(self, name: str, epoch: int, index: int, step: int) -> dict:
        params = dict(self.model.named_parameters())
        tensors = {}
        for pname in self.profile.names:
            for field_name, value in self.optimizer.state.get(params[pname], {}).items():
                tensors[f"{pname}::{field_name}"] = torch.as_tensor(value).detach().cpu()
        state = {"global_step": step, "epoch": epoch, "index": index, "trainable": self.trainable,
                 "selection_index": self.selection_index, "counters": self.counters,
                 "trainable_params": self.trainable_params,
                 "scheduler": self.scheduler.state_dict(), "rng": _rng_state()}
        path = self.writer.save_checkpoint(name, self.model, tensors, state, self.config.keep_checkpoints)
        return {"type": "checkpoint", "step": step, "path": str(path)}

    def _restore(self) -> tuple[int, int, int]:
        latest = checkpoints(self.handle.out)[-1]
        tensors, state = load_checkpoint(latest, self.model)
        params = dict(self.model.named_parameters())
        self.trainable = state["trainable"]
        set_trainable(self.model, self.trainable, self.optimizer, candidates=self.profile.names)
        for key, value in tensors.items():
            pname, field_name = key.split("::")
            self.optimizer.state[params[pname]][field_name] = value.to(params[pname].device)
        self.scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # the scheduler's state does not carry the learning rate it last set
        self.selection_index = state["selection_index"]
        self.counters = state["counters"]
        self.trainable_params = state["trainable_params"]
        _set_rng_state(state["rng"])
        self.writer.truncate_after(state["global_step"])
        return state["epoch"], state["index"], state["global_step"]

    # ------------------------------------------------------------------------------------------------- the end

    def _final(self, step: int) -> Iterator[dict]:
        c = self.config
        scores: dict[str, float] = {}
        if c.eval_rouge:
            started = time.perf_counter()
            for split, data in self.eval_data.items():
                if len(data) == 0:
                    continue
                predictions = generate_summaries(self.model, self.tokenizer, list(data["source"]),
                                                 max_source_tokens=c.max_source_tokens,
                                                 max_new_tokens=c.max_target_tokens, num_beams=c.num_beams)
                result = rouge(predictions, list(data["target"]))
                scores.update({f"{split}_{k}": v for k, v in result.items()})
                if split == "test":
                    scores.update(result)
                row = {"type": "eval", "split": split, "step": step, **result,
                       "examples": [{"prediction": p, "reference": r}
                                    for p, r in zip(predictions[:5], list(data["target"])[:5])]}
                self.writer.append("metrics", row)
                yield row
            self.counters["eval_seconds"] += time.perf_counter() - started
        yield self._finish("finished", step, scores)

    def _finish(self, status: str, step: int, scores: dict | None = None) -> dict:
        self._write_summary(status, step, **(scores or {}))
        self.handle.status = status
        self.handle.summary = self.summary
        return {"type": "done", "status": status, "step": step, "summary": self.summary}

    def _write_summary(self, status: str, step: int, **extra: Any) -> None:
        counters = self.counters
        evals = [r for r in read_jsonl(self.handle.out / "metrics.jsonl") if r["type"] == "eval"
                 and r["split"] == "validation" and "loss" in r]
        full = counters["flops_full"]
        self.summary = {
            "label": self.config.name, "scheme": self.spec.name, "rho": self.spec.rho, "k": self.spec.k,
            "model": self.config.model, "dataset": self.config.dataset, "status": status, "steps": step,
            "flops_total": self._flops_total(), "flops_training": counters["flops_training"],
            "flops_selection": counters["flops_selection"], "flops_full_equivalent": full,
            "flops_ratio": self._flops_total() / full if full else None,
            "flops_ratio_training": counters["flops_training"] / full if full else None,
            "rouge1": None, "rouge2": None, "rougeL": None, "rougeLsum": None,
            "val_loss": evals[-1]["loss"] if evals else None,
            "wall_seconds": counters["train_seconds"] + counters["selection_seconds"],
            "selection_seconds": counters["selection_seconds"], "eval_seconds": counters["eval_seconds"],
            "peak_memory_bytes": getattr(getattr(self, "memory", None), "peak", None),
            "trainable_params": self.trainable_params,
            "total_params": sum(p.numel() for p in self.model.parameters()),
            "train_examples": len(self.train_rows), "truncated_sources": self.truncated,
            "selections": self.selection_index, **extra,
        }
        self.writer.write_summary(self.summary)


def _count_params(model: torch.nn.Module, names: list[str]) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


class _adapters_disabled:
    """Inside, a peft model computes as its base model (to measure what full fine-tuning would cost)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inner = model.disable_adapter() if hasattr(model, "disable_adapter") else None

    def __enter__(self):
        return self.inner.__enter__() if self.inner is not None else None

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc) if self.inner is not None else False


class _PeakMemory:
    """Peak memory while training: CUDA's allocator peak, or on a CPU the peak resident set above the start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None
        self._done = threading.Event()

    def __enter__(self) -> "_PeakMemory":
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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    state["numpy"] = [state["numpy"][0], state["numpy"][1].tolist(), *state["numpy"][2:]]
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
