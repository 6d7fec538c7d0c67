"""Fine-tuning schemes, one registered class each, carrying everything that differs between them.

A scheme says which tensors it trains (`trainable`), whether it chooses them again while training (`reselects`, with
the importance metric it scores them by), whether it wraps the model in peft adapters (`wrap`) and what its one
parameter is (`rho`, the FLOPs budget of `green` and `random`, or `k` of `top-k`). The training engine, the CLI, the
app and the benchmarks ask the scheme; none of them tests a scheme's name. To add a scheme, write one subclass of
`Scheme` here and decorate it with `@register`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

if TYPE_CHECKING:  # annotations only: this module stays importable without torch
    import torch

    from .profile import TensorProfile
    from .training.config import TrainConfig

__all__ = ["SCHEMES", "Scheme", "parse_scheme", "register"]

SCHEMES: dict[str, type["Scheme"]] = {}
"""Every registered scheme by name, in registration order (the order the CLI and the app list them in)."""


def register(cls: type["Scheme"]) -> type["Scheme"]:
    """Class decorator: make a `Scheme` subclass available by its `name`."""
    SCHEMES[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Scheme:
    """A scheme with its parameter: `parse_scheme("green:0.5")` is `Green(rho=0.5)`, `parse_scheme("top-k:2")` is
    `TopK(k=2)`. Subclasses set the class attributes and override what they do differently."""

    name: ClassVar[str]
    description: ClassVar[str]
    parameter: ClassVar[str | None] = None  # "rho" or "k": the one parameter the scheme takes, if any
    reselects: ClassVar[bool] = False  # chooses its tensors while training, under the budget rho
    uses_peft: ClassVar[bool] = False  # trains peft adapters instead of the model's own tensors
    rho: float | None = None
    k: int | None = None

    @property
    def label(self) -> str:
        """The canonical text of the scheme: `full`, `green:0.5`, `top-k:2`; `parse_scheme(label)` gives it back."""
        value = getattr(self, self.parameter) if self.parameter else None
        return self.name if value is None else f"{self.name}:{_format(value)}"

    def importance_metric(self, configured: str) -> str:
        """The metric a re-selecting scheme scores tensors by (the configured one unless the scheme fixes it)."""
        return configured

    def wrap(self, model: "torch.nn.Module", profile: "TensorProfile", config: "TrainConfig | None" = None
             ) -> "torch.nn.Module":
        """The model this scheme trains (the model itself unless the scheme adds adapters)."""
        return model

    def trainable(self, profile: "TensorProfile") -> list[str]:
        """The tensors trained from the start (for a re-selecting scheme, every candidate until it first selects)."""
        return list(profile.names)

    def initial_tensors(self, profile: "TensorProfile", head: "Sequence[str]" = ()) -> list[str]:
        """`trainable(profile)` and a sequence classifier's `head` (`models.classifier_head`), in the profile's
        order. The head is new and random when the classifier was made from a language model, so a scheme that
        trains a fixed part of the model (LayerNorm tuning, BitFit) trains it too, or its outputs would mean
        nothing; full, top-k and a re-selecting scheme's first set hold it already, and peft schemes train it
        through `modules_to_save` (their profile names the wrapped copy). Re-selections then keep it or not."""
        wanted = set(self.trainable(profile)) | set(head)
        return [n for n in profile.names if n in wanted]

    def predicted_ratio(self, profile: "TensorProfile", importance: Any = None) -> float:
        """A step's FLOPs as a fraction of full fine-tuning, predicted from the base model's profile before training
        (for planning; runs measure what they spend)."""
        return profile.step_flops(profile.as_mask(self.trainable(profile))) / profile.full_flops


@register
class Full(Scheme):
    name = "full"
    description = "every tensor trained"


@register
class Green(Scheme):
    name = "green"
    description = "GreenTrainer: the most important tensors under the FLOPs budget rho, re-selected every interval"
    parameter = "rho"
    reselects = True

    def predicted_ratio(self, profile, importance=None):
        from .select import select_tensors

        if importance is None:
            raise ValueError("green's cost depends on what it selects: pass the tensors' importance")
        return select_tensors(profile, importance, self.rho).predicted_ratio


@register
class Random(Scheme):
    name = "random"
    description = "random tensors under the same FLOPs budget rho (ablation: does importance matter?)"
    parameter = "rho"
    reselects = True

    def importance_metric(self, configured: str) -> str:
        return "random"

    def predicted_ratio(self, profile, importance=None):
        return self.rho  # random selections differ; the budget bounds every one


class _Adapters(Scheme):
    """peft adapters in every block: tiny weight gradients, but the activation gradient runs through the whole
    network, so a step costs t_fp + sum(t_dy) of the base model."""

    uses_peft = True

    def predicted_ratio(self, profile, importance=None):
        return float(profile.t_fp + profile.t_dy.sum()) / profile.full_flops


@register
class Lora(_Adapters):
    name = "lora"
    description = "LoRA adapters (peft) on the attention query/value projections"

    def wrap(self, model, profile, config=None):
        from peft import LoraConfig, get_peft_model

        from .models import classifier_head

        c = _config(config)
        options = dict(task_type=_task(model), r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout)
        heads = sorted({name.rsplit(".", 1)[0] for name in classifier_head(model)})
        if heads:  # a classifier's new head is trained whole beside the adapters (peft's modules_to_save)
            options["modules_to_save"] = heads
        try:
            return get_peft_model(model, LoraConfig(**options))
        except ValueError:
            # peft has no default target modules for this architecture: use its query/value projections
            targets = sorted({lay.name.rsplit(".", 2)[-2] for lay in profile.layout
                              if lay.type.split(".")[0] in ("q", "v", "qkv")})
            if not targets:
                raise ValueError(f"LoRA: peft has no default target modules for {type(model).__name__} and no "
                                 "query/value projections were found in its layout") from None
            return get_peft_model(model, LoraConfig(**options, target_modules=targets))


@register
class Prefix(_Adapters):
    name = "prefix"
    description = "prefix tuning (peft) with virtual tokens"

    def wrap(self, model, profile, config=None):
        from peft import PrefixTuningConfig, get_peft_model

        try:
            return get_peft_model(model, PrefixTuningConfig(task_type=_task(model),
                                                            num_virtual_tokens=_config(config).prefix_tokens))
        except Exception as err:  # peft raises several types for unsupported models
            raise ValueError(f"prefix tuning is not supported for {type(model).__name__} by peft: {err}") from err


@register
class BitFit(Scheme):
    name = "bitfit"
    description = "bias tensors only"

    def trainable(self, profile):
        chosen = [n for n in profile.names if n.endswith(".bias")]
        if not chosen:
            raise ValueError("bitfit trains bias tensors, and this model has none (LLaMA and T5 use no biases)")
        return chosen


@register
class LayerNorm(Scheme):
    name = "layernorm"
    description = "normalisation tensors only"

    def trainable(self, profile):
        chosen = [lay.name for lay in profile.layout if "norm" in lay.type]
        if not chosen:
            raise ValueError("layernorm trains normalisation tensors, and this model's layout shows none")
        return chosen


@register
class TopK(Scheme):
    name = "top-k"
    description = "the last k blocks, plus the final norm and untied head"
    parameter = "k"

    def trainable(self, profile):
        layout = profile.layout
        stacks = {lay.stack for lay in layout if lay.block is not None}
        stack = "decoder" if "decoder" in stacks else "none"
        blocks = sorted({lay.block for lay in layout if lay.stack == stack and lay.block is not None})
        if self.k > len(blocks):
            raise ValueError(f"top-k:{self.k} asks for more blocks than the model has ({len(blocks)})")
        last = set(blocks[-self.k:])
        in_blocks = [i for i, lay in enumerate(layout) if lay.stack == stack and lay.block in last]
        deepest = max(in_blocks)
        # outside the blocks, only what lies nearer the loss (final norm, head) and is not also used deeper (a tied
        # input embedding would drag the activation gradient through the whole network)
        head = [i for i, lay in enumerate(layout)
                if lay.block is None and i < deepest and profile.reach[i] <= deepest]
        return [profile.names[i] for i in sorted(in_blocks + head)]


def parse_scheme(text: str, *, rho: float | None = None, k: int | None = None) -> Scheme:
    """The scheme `text` names (`full`, `green:0.5`, `random:0.5`, `top-k:2`, `lora`, ...).

    A parameter written in `text` wins over `rho` / `k`, which fill in a missing one (`top-k` defaults to k = 2).
    """
    name, _, arg = str(text).strip().partition(":")
    cls = SCHEMES.get(name)
    if cls is None:
        raise ValueError(f"unknown scheme {name!r}: choose one of {', '.join(SCHEMES)}")
    if cls.parameter == "rho":
        value = _number(arg, text, float) if arg else rho
        if value is None:
            raise ValueError(f"scheme {name!r} needs a FLOPs budget: write {name}:0.5 or pass --rho")
        if isinstance(value, bool) or not math.isfinite(value) or not 0 < value <= 1:
            raise ValueError(f"rho={value} in {text!r} must be in (0, 1]")
        return cls(rho=float(value))
    if cls.parameter == "k":
        value = _number(arg, text, int) if arg else (k if k is not None else 2)
        if value < 1:
            raise ValueError(f"top-k needs k >= 1, got {value}")
        return cls(k=int(value))
    if arg:
        raise ValueError(f"scheme {name!r} takes no parameter, got {text!r}")
    return cls()


def _number(arg: str, text: str, kind: type) -> Any:
    try:
        return kind(arg)
    except ValueError:
        raise ValueError(f"cannot read the parameter of scheme {text!r}: {arg!r} is not a {kind.__name__}") from None


def _format(value: float | int) -> str:
    """Shortest text that reads back as `value` (0.5 -> "0.5", 1.0 -> "1", 1/3 -> "0.3333333333333333")."""
    short = f"{value:g}"
    return short if type(value)(short) == value else repr(value)


def _task(model: Any) -> Any:
    from peft import TaskType

    from .models import is_sequence_classifier

    if is_sequence_classifier(model):
        return TaskType.SEQ_CLS
    return TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM


def _config(config: "TrainConfig | None") -> "TrainConfig":
    if config is not None:
        return config
    from .training.config import TrainConfig

    return TrainConfig()
