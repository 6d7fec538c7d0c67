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
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..schemes import Scheme, parse_scheme
from ..tasks import TASKS, Task, get_task

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # here, not in .precision: the CLI's --help needs no torch
ATTENTIONS = ("auto", "eager", "sdpa")  # greencore.models.set_attention says what each runs
STRATEGIES = ("auto", "ddp", "fsdp")  # greencore.training.distributed.resolve_strategy says when each applies

__all__ = ["DEMO", "TrainConfig", "flag"]


def flag(name: str) -> str:
    """The command-line flag of `TrainConfig` field `name` (`--batch-size` for `batch_size`), which messages name so
    that a CLI user reads the flag they typed and a library user still recognises the field."""
    meta = _FIELDS[name].metadata
    return meta.get("flag", "--" + name.replace("_", "-"))


def _setting(default: Any, help: str, **cli: Any) -> Any:
    """A field with its help text; `cli` may hold `flag` (e.g. "--no-rouge") and `choices` for the command line."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything that defines a run. The defaults are the offline default: `smollm2` on `stdlib-tldr`, one epoch
    over every training pair; `TrainConfig.demo()` is the same run cut to a few minutes on a CPU."""

    model: str = _setting("smollm2", "built-in name, Hugging Face hub id or local checkpoint folder")
    task: str = _setting("summarization", "summarization (source -> summary, ROUGE) or classification (text -> "
                         "class under a new sequence-classification head, accuracy and macro-F1)", choices=tuple(TASKS))
    dataset: str | None = _setting(None, "summarization: stdlib-tldr (default), scitldr, dialogsum; classification: "
                                   "stdlib-topic (default), sst2, ag_news; or a .jsonl/.json/.csv file")
    scheme: str = _setting("green", "full, green[:rho], random[:rho], lora, prefix, bitfit, layernorm, top-k[:k]")
    rho: float | None = _setting(0.5, "FLOPs budget of green/random: step FLOPs as a fraction of full, in (0, 1]")
    interval: int = _setting(1, "re-select every this many epochs (or steps, with --interval-unit step)")
    interval_unit: str = _setting("epoch", "unit of --interval", choices=("epoch", "step"))
    probe_batches: int = _setting(2, "batches the importance of each re-selection is averaged over")
    probe: str = _setting("batches", "where a re-selection's gradients come from: batches (the paper's: probe passes "
                          "over --probe-batches batches of their own), or step (the step it precedes: its backward "
                          "reaches every tensor within the budget once, their gradients are scored and only the "
                          "selected tensors are updated; no probe passes)", choices=("batches", "step"))
    metric: str = _setting("taylor", "importance metric of green: taylor, grad_l1, fisher, magnitude, random, or "
                                      "the structural uniform or params")
    importance_ema: float = _setting(0.0, "weight of the earlier selections in the score a re-selection uses: "
                                     "ema x the previous score + (1 - ema) x this probe's, in [0, 1); 0 (the "
                                     "paper's): each selection scores its own probe only")
    rho_shift: float = _setting(0.0, "green/random: spend the run's budget unevenly: it falls linearly over the run "
                                "from rho + shift at the first step to rho - shift at the last, so its mean over the "
                                "run stays rho; each re-selection gets the mean of that line over the steps it trains "
                                "(0, the paper's: rho for every selection)")
    split_tied: bool = _setting(False, "green/random: a tied weight (input embedding = LM head) becomes one candidate "
                                "per use, so the head's use can train alone, with the gradient of that use only and "
                                "without the activation gradient down to the embedding (the paper: one tensor, "
                                "priced by its deepest use)", flag="--split-tied")
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
    prompt: str = _setting("auto", "auto: chat where the tokenizer has a chat template (smollm2), else tldr; tldr: "
                           "the paper's '{source} TL;DR: {summary}'; chat: the tokenizer's chat template",
                           choices=("auto", "tldr", "chat"))
    max_source_tokens: int = _setting(128, "source (classification: text) tokens kept per example (sources are "
                                      "truncated, never targets)")
    max_target_tokens: int = _setting(32, "summary tokens allowed; longer summaries drop their example")
    max_train_examples: int | None = _setting(None, "use at most this many training pairs (default: all)")
    max_eval_examples: int | None = _setting(100, "use at most this many validation and test pairs")
    num_beams: int = _setting(2, "beam width of the final generation")
    eval_rouge: bool = _setting(True, "skip generation and ROUGE at the end (summarization; a classifier's accuracy "
                                "costs one forward pass and is always scored)", flag="--no-rouge")
    seed: int = _setting(0, "seed of initialisation, data order, probes and dropout")
    device: str = _setting("auto", "auto, cpu, cuda or cuda:N")
    precision: str = _setting("auto", "fp32, bf16 or fp16 (autocast with fp32 master weights; fp16 with loss scaling); "
                              "auto: bf16 on a CUDA device that supports it, else fp32", choices=PRECISIONS)
    attention: str = _setting("auto", "attention kernels: eager, or sdpa (fused; its backward recomputes the scores, "
                              "counted); auto: sdpa on CUDA, eager on a CPU and under --strategy fsdp",
                              choices=ATTENTIONS)
    strategy: str = _setting("auto", "how the ranks of a distributed launch hold the model: ddp (every rank a whole "
                             "copy), fsdp (FSDP2: each transformer block's tensors, gradients and optimizer state "
                             "sharded over the ranks); auto: fsdp under an accelerate launch configured for FSDP, "
                             "else ddp. One process ignores ddp and auto", choices=STRATEGIES)
    gradient_checkpointing: bool = _setting(False, "recompute each block's activations in the backward pass "
                                            "(non-reentrant) to save memory; the FLOPs measured include the "
                                            "recomputation, the predicted ones do not (the summary says by how much "
                                            "they differ)", flag="--gradient-checkpointing")
    source_field: str | None = _setting(None, "source column of a local data file")
    target_field: str | None = _setting(None, "target column of a local data file")
    text_field: str | None = _setting(None, "text column of a local classification file (default: text)")
    label_field: str | None = _setting(None, "label column of a local classification file, string or integer labels "
                                       "(default: label)")
    keep_checkpoints: int = _setting(2, "checkpoints kept in the run folder (newest first)")
    energy: bool = _setting(True, "do not track energy and CO2 (codecarbon's offline tracker, nothing is sent)",
                            flag="--no-energy")
    country: str | None = _setting(None, "grid country for CO2, ISO 3166-1 alpha-3 such as FRA or USA (codecarbon's "
                                         "offline data; default: its world average)")
    grid_intensity: float | None = _setting(None, "grid carbon intensity in g CO2 per kWh (overrides --country)")
    label: str | None = _setting(None, "name of the run in tables and figures (default: the scheme)")

    def __post_init__(self) -> None:
        from ..data.batching import PROMPTS  # here, not at the top: the CLI's --help needs no torch
        from ..importance import IMPORTANCE_METRICS
        from ..models import resolve_device
        from .precision import resolve_precision

        self._check_types()
        task = get_task(self.task)
        self.dataset = self.dataset or task.default_dataset
        task.check(self)
        spec = parse_scheme(self.scheme, rho=self.rho, k=self.k)
        self.scheme, self.rho, self.k = spec.label, spec.rho, spec.k
        checks = [
            ("interval", self.interval >= 1, ">= 1"),
            ("probe_batches", self.probe_batches >= 1, ">= 1"),
            ("importance_ema", 0 <= self.importance_ema < 1, "in [0, 1)"),
            ("metric", self.metric in IMPORTANCE_METRICS, f"one of {', '.join(IMPORTANCE_METRICS)}"),
            ("interval_unit", self.interval_unit in ("epoch", "step"), "'epoch' or 'step'"),
            ("probe", self.probe in ("batches", "step"), "'batches' or 'step'"),
            ("prompt", self.prompt in PROMPTS, f"one of {', '.join(PROMPTS)}"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("attention", self.attention in ATTENTIONS, f"one of {', '.join(ATTENTIONS)}"),
            ("strategy", self.strategy in STRATEGIES, f"one of {', '.join(STRATEGIES)}"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a positive number"),
            ("num_beams", self.num_beams >= 1, ">= 1"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
            ("max_train_examples", self.max_train_examples is None or self.max_train_examples >= 1, ">= 1"),
            ("max_eval_examples", self.max_eval_examples is None or self.max_eval_examples >= 1, ">= 1"),
        ]
        checks.append(("grid_intensity", self.grid_intensity is None
                       or (self.grid_intensity >= 0 and math.isfinite(self.grid_intensity)), "a number >= 0"))
        checks.append(("rho_shift", self.rho_shift == 0 or (spec.reselects and 0 < self.rho_shift < self.rho
                                                             and self.rho + self.rho_shift <= 1),
                       f"0, or for a scheme that selects tensors in (0, rho) with rho + shift <= 1 (rho={self.rho})"))
        checks.append(("split_tied", not self.split_tied or spec.reselects, "off for a scheme that does not select "
                       "tensors (it trains whole tensors)"))
        checks.append(("split_tied", not (self.split_tied and self.probe == "step"), "off with --probe step (one "
                       "step's gradient of a tied weight cannot be told apart by use): use --probe batches"))
        if self.strategy == "fsdp":  # what the sharded path does not run (yet): refused, never run unchecked
            checks += [("split_tied", not self.split_tied, "off with --strategy fsdp (a use of a sharded tied weight "
                        "cannot be made a leaf of its own)"),
                       ("precision", self.precision != "fp16", "fp32, bf16 or auto with --strategy fsdp (fp16's loss "
                        "scaling is not sharded)"),
                       ("gradient_checkpointing", not self.gradient_checkpointing, "off with --strategy fsdp (not "
                        "supported there yet)"),
                       ("attention", self.attention != "sdpa", "eager or auto with --strategy fsdp (full fine-tuning's "
                        "FLOPs are measured on a weightless twin of the model, where sdpa's mask code cannot run; "
                        "auto runs eager there)"),
                       ("scheme", not spec.uses_peft, "a scheme that trains the model's own tensors with --strategy "
                        "fsdp (full, green, random, bitfit, layernorm, top-k; adapters are not sharded yet)")]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{flag(name)} {getattr(self, name)!r} ({name}=) must be {expected}")
        if self.country is not None:
            from ..energy import check_country

            self.country = check_country(self.country)
        resolve_precision(self.precision, resolve_device(self.device))  # a device (or a precision) this machine does
        # not have fails now, not after loading the model

    def _check_types(self) -> None:
        """Each value of the kind its field declares: a whole number for an int (4.0 becomes 4; 2.5 is refused, not
        rounded), a number for a float, nothing empty unless the field may be None."""
        kinds = {"int": (numbers.Integral, "a whole number"), "float": (numbers.Real, "a number"),
                 "bool": (bool, "true or false"), "str": (str, "text")}
        for f in fields(self):
            value, declared = getattr(self, f.name), f.type.replace(" | None", "")
            kind, wanted = kinds[declared]
            if value is None:
                if f.type.endswith("| None"):
                    continue
                raise ValueError(f"{flag(f.name)} is empty ({f.name}=None): give {wanted}")
            if declared == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, kind) or (isinstance(value, bool) and declared != "bool"):
                raise ValueError(f"{flag(f.name)} {value!r} ({f.name}=) must be {wanted}")
            setattr(self, f.name, float(value) if declared == "float" else int(value) if declared == "int" else value)

    @classmethod
    def demo(cls, **overrides: Any) -> "TrainConfig":
        """A run sized to finish in a few minutes on 2 CPU cores with the offline default (the app's Train tab
        starts from it; bench/bench_app.py measures its time and ROUGE against the zero-shot model's)."""
        return cls(**{**DEMO, **overrides})

    @property
    def spec(self) -> Scheme:
        """The scheme object, which carries the scheme's behaviour."""
        return parse_scheme(self.scheme)

    @property
    def task_spec(self) -> Task:
        """The task object, which carries the task's data, encoding and evaluation."""
        return get_task(self.task)

    @property
    def name(self) -> str:
        return self.label or self.scheme

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_FIELDS = {f.name: f for f in fields(TrainConfig)}
DEMO: dict[str, Any] = {"scheme": "green", "rho": 0.7, "max_train_examples": 112, "max_steps": 14,
                        "max_eval_examples": 20, "num_beams": 1}
"""What `TrainConfig.demo()` changes: green at rho 0.7, at most 14 steps of 8 pairs, greedy ROUGE on 20 validation
and 20 test pairs. Measured on smollm2 with the chat prompt (bench/results/app.md and bench/README.md): 20 steps at
rho 0.5 ended below the zero-shot model's validation ROUGE-L (21.8 vs 25.1, beam 2), rho 0.7 above it (27.3);
greedy decoding halves the evaluation's time, and 13 steps end in under 5 minutes at 34.4 against 21.9."""
