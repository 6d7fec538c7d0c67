"""`TrainConfig`: every setting of a training run, in one place.

Each field carries its help text (and, where it differs from the field's name, its command-line flag) as metadata:
the CLI builds its `train` and `compare` flags from these fields and the app takes its form defaults from them, so a
default or a description is written once. The scheme and its parameter are normalised on construction:
`TrainConfig(scheme="green", rho=0.7)` and `TrainConfig(scheme="green:0.7")` are the same config, with
`scheme == "green:0.7"` and `rho == 0.7`; a parameter written in the scheme wins over the `rho` / `k` field, and
schemes without a budget (or without k) record None there, so `config.json` never contradicts what ran.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..schemes import Scheme, parse_scheme

__all__ = ["TrainConfig"]


def _setting(default: Any, help: str, **cli: Any) -> Any:
    """A field with its help text; `cli` may hold `flag` (e.g. "--no-rouge") and `choices` for the command line."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything that defines a run. The defaults are the offline default: `minilm` on `stdlib-tldr`."""

    model: str = _setting("minilm", "built-in name, Hugging Face hub id or local checkpoint folder")
    dataset: str = _setting("stdlib-tldr", "stdlib-tldr, scitldr, dialogsum, or a .jsonl/.json/.csv file")
    scheme: str = _setting("green", "full, green[:rho], random[:rho], lora, prefix, bitfit, layernorm, top-k[:k]")
    rho: float | None = _setting(0.5, "FLOPs budget of green/random: step FLOPs as a fraction of full, in (0, 1]")
    interval: int = _setting(1, "re-select every this many epochs (or steps, with --interval-unit step)")
    interval_unit: str = _setting("epoch", "unit of --interval", choices=("epoch", "step"))
    probe_batches: int = _setting(2, "batches the importance of each re-selection is averaged over")
    metric: str = _setting("taylor", "importance metric of green: taylor, grad_l1, fisher, magnitude or random")
    k: int | None = _setting(2, "blocks trained by top-k")
    lora_r: int = _setting(8, "LoRA rank")
    lora_alpha: int = _setting(32, "LoRA scaling alpha")
    lora_dropout: float = _setting(0.1, "LoRA dropout")
    prefix_tokens: int = _setting(20, "virtual tokens of prefix tuning")
    epochs: int = _setting(1, "passes over the training split")
    max_steps: int | None = _setting(None, "stop after this many optimizer steps (default: all epochs)")
    batch_size: int = _setting(8, "examples per optimizer step (the global batch under torchrun)")
    lr: float = _setting(1e-4, "peak learning rate of AdamW (linear decay to 0)")
    weight_decay: float = _setting(0.01, "AdamW weight decay")
    max_grad_norm: float = _setting(1.0, "gradient clipping norm (0: no clipping)")
    max_source_tokens: int = _setting(128, "source tokens kept per example (sources are truncated, never targets)")
    max_target_tokens: int = _setting(32, "summary tokens allowed; longer summaries drop their example")
    max_train_examples: int | None = _setting(None, "use at most this many training pairs (default: all)")
    max_eval_examples: int | None = _setting(100, "use at most this many validation and test pairs")
    num_beams: int = _setting(2, "beam width of the final generation")
    eval_rouge: bool = _setting(True, "skip generation and ROUGE at the end", flag="--no-rouge")
    seed: int = _setting(0, "seed of initialisation, data order, probes and dropout")
    device: str = _setting("auto", "auto, cpu, cuda or cuda:N")
    source_field: str | None = _setting(None, "source column of a local data file")
    target_field: str | None = _setting(None, "target column of a local data file")
    keep_checkpoints: int = _setting(2, "checkpoints kept in the run folder (newest first)")
    label: str | None = _setting(None, "name of the run in tables and figures (default: the scheme)")

    def __post_init__(self) -> None:
        from ..importance import IMPORTANCE_METRICS  # here, not at the top: the CLI's --help needs no torch
        from ..models import resolve_device

        spec = parse_scheme(self.scheme, rho=self.rho, k=self.k)
        self.scheme, self.rho, self.k = spec.label, spec.rho, spec.k
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
        resolve_device(self.device)  # a device this machine does not have fails now, not after loading the model

    @property
    def spec(self) -> Scheme:
        """The scheme object, which carries the scheme's behaviour."""
        return parse_scheme(self.scheme)

    @property
    def name(self) -> str:
        return self.label or self.scheme

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
