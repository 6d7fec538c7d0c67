"""Fine-tuning schemes: which tensors each one trains.

`green` and `random` choose tensors at run time (by importance, or at random, under the same FLOPs budget rho);
the others fix their tensors once. `lora` and `prefix` add peft adapters and train only those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .profile import TensorProfile

__all__ = ["SCHEMES", "SchemeSpec", "parse_scheme", "static_trainable", "wrap_peft"]

SCHEMES: dict[str, str] = {
    "full": "every tensor trained",
    "green": "GreenTrainer: the most important tensors under the FLOPs budget rho, re-selected every interval",
    "random": "random tensors under the same FLOPs budget rho (ablation: does importance matter?)",
    "lora": "LoRA adapters (peft) on the attention query/value projections",
    "prefix": "prefix tuning (peft) with virtual tokens",
    "bitfit": "bias tensors only",
    "layernorm": "normalisation tensors only",
    "top-k": "the last k blocks, plus the final norm and untied head",
}


@dataclass(frozen=True)
class SchemeSpec:
    """A scheme with its one parameter: `green:0.5` is SchemeSpec("green", rho=0.5), `top-k:2` has k=2."""

    name: str
    rho: float | None = None
    k: int | None = None

    @property
    def label(self) -> str:
        if self.rho is not None:
            return f"{self.name}:{self.rho:g}"
        return f"{self.name}:{self.k}" if self.k is not None else self.name


def parse_scheme(text: str, *, rho: float | None = None, k: int | None = None) -> SchemeSpec:
    """Parse `full`, `green:0.5`, `random:0.5`, `top-k:2`, `lora`, ...; `rho`/`k` fill in a missing parameter."""
    name, _, arg = text.strip().partition(":")
    if name not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r}: choose one of {', '.join(SCHEMES)}")
    if name in ("green", "random"):
        value = _number(arg, text, float) if arg else rho
        if value is None:
            raise ValueError(f"scheme {name!r} needs a FLOPs budget: write {name}:0.5 or pass --rho")
        if not 0 < value <= 1:
            raise ValueError(f"rho={value} in {text!r} must be in (0, 1]")
        return SchemeSpec(name, rho=value)
    if name == "top-k":
        value = _number(arg, text, int) if arg else (k if k is not None else 2)
        if value < 1:
            raise ValueError(f"top-k needs k >= 1, got {value}")
        return SchemeSpec(name, k=value)
    if arg:
        raise ValueError(f"scheme {name!r} takes no parameter, got {text!r}")
    return SchemeSpec(name)


def _number(arg: str, text: str, kind: type) -> float | int:
    try:
        return kind(arg)
    except ValueError:
        raise ValueError(f"cannot read the parameter of scheme {text!r}: {arg!r} is not a {kind.__name__}") from None


def static_trainable(spec: SchemeSpec, profile: TensorProfile) -> list[str]:
    """The tensors a fixed scheme trains (full, bitfit, layernorm, top-k; after peft wrapping, lora and prefix)."""
    names, layout = profile.names, profile.layout
    if spec.name in ("full", "lora", "prefix"):
        return list(names)
    if spec.name == "bitfit":
        chosen = [n for n in names if n.endswith(".bias")]
        if not chosen:
            raise ValueError("bitfit trains bias tensors, and this model has none (LLaMA and T5 use no biases)")
        return chosen
    if spec.name == "layernorm":
        chosen = [lay.name for lay in layout if "norm" in lay.type]
        if not chosen:
            raise ValueError("layernorm trains normalisation tensors, and this model's layout shows none")
        return chosen
    if spec.name == "top-k":
        return _top_k(spec.k, profile)
    raise ValueError(f"scheme {spec.name!r} selects its tensors while training, not once")


def _top_k(k: int, profile: TensorProfile) -> list[str]:
    stacks = {lay.stack for lay in profile.layout if lay.block is not None}
    stack = "decoder" if "decoder" in stacks else "none"
    blocks = sorted({lay.block for lay in profile.layout if lay.stack == stack and lay.block is not None})
    if k > len(blocks):
        raise ValueError(f"top-k:{k} asks for more blocks than the model has ({len(blocks)})")
    last = set(blocks[-k:])
    in_blocks = [i for i, lay in enumerate(profile.layout) if lay.stack == stack and lay.block in last]
    deepest = max(in_blocks)
    # outside the blocks, only what lies nearer the loss (final norm, head) and is not also used deeper (a tied
    # input embedding would drag the activation gradient through the whole network)
    head = [i for i, lay in enumerate(profile.layout)
            if lay.block is None and i < deepest and profile.reach[i] <= deepest]
    return [profile.names[i] for i in sorted(in_blocks + head)]


def wrap_peft(model: torch.nn.Module, spec: SchemeSpec, profile: TensorProfile, *, lora_r: int = 8,
              lora_alpha: int = 32, lora_dropout: float = 0.1, prefix_tokens: int = 20) -> torch.nn.Module:
    """Add LoRA or prefix-tuning adapters with peft; only the adapters require grad afterwards."""
    from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    arch = type(model).__name__
    if spec.name == "lora":
        try:
            return get_peft_model(model, LoraConfig(task_type=task, r=lora_r, lora_alpha=lora_alpha,
                                                    lora_dropout=lora_dropout))
        except ValueError:
            # peft has no default target modules for this architecture: use its query/value projections
            targets = sorted({lay.name.rsplit(".", 2)[-2] for lay in profile.layout
                              if lay.type.split(".")[0] in ("q", "v", "qkv")})
            if not targets:
                raise ValueError(f"LoRA: peft has no default target modules for {arch} and no query/value "
                                 "projections were found in its layout") from None
            return get_peft_model(model, LoraConfig(task_type=task, r=lora_r, lora_alpha=lora_alpha,
                                                    lora_dropout=lora_dropout, target_modules=targets))
    if spec.name == "prefix":
        try:
            wrapped = get_peft_model(model, PrefixTuningConfig(task_type=task, num_virtual_tokens=prefix_tokens))
        except Exception as err:  # peft raises several types for unsupported models
            raise ValueError(f"prefix tuning is not supported for {arch} by peft: {err}") from err
        return wrapped
    raise ValueError(f"scheme {spec.name!r} does not use peft adapters")
