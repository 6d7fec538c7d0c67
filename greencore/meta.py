"""Full-size models without weights: any architecture built from its config on the meta device, for profiling.

Per-tensor FLOPs depend only on shapes, so `profile_model` on a meta-device model gives the same counts as on a
loaded one (tests/test_meta.py checks this exactly on the tiny models) while no parameter memory is allocated: a
70B-parameter config profiles in seconds on a laptop. Without weights there is no learned importance; selections on
such a model use a structural one (`importance.STRUCTURAL_METRICS`) and say so.

    >>> model = meta_model(load_config("llama-3-8b"))
    >>> profile = profile_model(model, meta_batch(model, batch_size=4, seq_len=512))

A config comes from the small table `ARCHITECTURES` (public dimensions of well-known models, each with its source),
a `config.json` file or a checkpoint folder, a built-in model's name, or a Hugging Face hub id (its config only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PretrainedConfig, PreTrainedModel

from .data import IGNORE_INDEX

__all__ = ["ARCHITECTURES", "Architecture", "load_config", "meta_batch", "meta_model", "meta_twin", "twin_batch"]


@dataclass(frozen=True)
class Architecture:
    """The public dimensions of a well-known model: enough of its config.json to build it with transformers."""

    model_type: str
    dims: dict[str, Any]
    source: str  # where the dimensions come from
    note: str = ""

    def config(self) -> PretrainedConfig:
        """The transformers config of this architecture (everything not in `dims` takes transformers' default)."""
        return AutoConfig.for_model(self.model_type, **self.dims)


_HF = "https://huggingface.co/{}/blob/main/config.json"

ARCHITECTURES: dict[str, Architecture] = {
    "opt-2.7b": Architecture("opt", {
        "hidden_size": 2560, "word_embed_proj_dim": 2560, "ffn_dim": 10240, "num_hidden_layers": 32,
        "num_attention_heads": 32, "vocab_size": 50272, "max_position_embeddings": 2048, "pad_token_id": 1,
        "do_layer_norm_before": True, "tie_word_embeddings": True,
    }, _HF.format("facebook/opt-2.7b"), "the paper's main model"),
    "bloomz-3b": Architecture("bloom", {
        "hidden_size": 2560, "n_layer": 30, "n_head": 32, "vocab_size": 250880, "pad_token_id": 3,
        "tie_word_embeddings": True,
    }, _HF.format("bigscience/bloomz-3b"), "in the paper"),
    "flan-t5-xl": Architecture("t5", {
        "d_model": 2048, "d_ff": 5120, "d_kv": 64, "num_heads": 32, "num_layers": 24, "num_decoder_layers": 24,
        "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "pad_token_id": 0,
        "decoder_start_token_id": 0,
    }, _HF.format("google/flan-t5-xl"), "in the paper (FLAN-T5-3B)"),
    "llama-3-8b": Architecture("llama", {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    }, _HF.format("meta-llama/Meta-Llama-3-8B")),
    "llama-3-70b": Architecture("llama", {
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    }, _HF.format("meta-llama/Meta-Llama-3-70B")),
    "qwen2.5-7b": Architecture("qwen2", {
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 131072,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    }, _HF.format("Qwen/Qwen2.5-7B")),
    "mistral-7b": Architecture("mistral", {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768, "sliding_window": 4096,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    }, _HF.format("mistralai/Mistral-7B-v0.1")),
}  # fmt: skip


def load_config(name: str, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """A model's config without its weights: an `ARCHITECTURES` name, a `config.json` file or a folder holding one,
    a built-in model (`models.BUILTIN_MODELS`, loaded once for its config) or a hub id (`AutoConfig` only)."""
    from .models import BUILTIN_MODELS, check_findable, load_model

    name = (name or "").strip()
    if not name:
        raise ValueError("model is empty: give an architecture (" + ", ".join(ARCHITECTURES) + "), a config.json "
                         "path, a built-in model or a hub id")
    if name in ARCHITECTURES:
        return ARCHITECTURES[name].config()
    if name in BUILTIN_MODELS:
        return load_model(name, device="cpu")[0].config
    path = Path(name).expanduser()
    if path.is_file() or path.is_dir():
        if path.is_dir() and not (path / "config.json").is_file():
            raise ValueError(f"{path} has no config.json: give the folder of a checkpoint or its config.json")
        try:
            return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path} is not a transformers config ({type(err).__name__}: {err})") from None
    check_findable(name, builtins=[*ARCHITECTURES, *BUILTIN_MODELS])
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"could not read the config of {name!r} ({type(err).__name__}: {err})") from None


def meta_model(config: PretrainedConfig, *, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model of `config` with every parameter on the meta device (shapes, no memory), eager attention, in
    training mode. Encoder-decoders become sequence-to-sequence LMs, everything else a causal LM."""
    if not isinstance(config, PretrainedConfig):
        raise ValueError(f"meta_model needs a transformers config (see load_config), got {type(config).__name__}")
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        try:
            model = auto.from_config(config, attn_implementation="eager", trust_remote_code=trust_remote_code)
        except ValueError as err:
            raise ValueError(f"transformers cannot build a {auto.__name__[12:]} from this {config.model_type} config "
                             f"({err})") from None
    return model.train()


def meta_twin(model: PreTrainedModel) -> PreTrainedModel:
    """A weightless copy of a loaded model on the meta device: the same class, config and attention kernels, in
    training mode. It runs what the model runs, so FlopCounterMode counts the same FLOPs on it (tested), with no
    memory and no collective: the sharded engine measures full fine-tuning's cost on it."""
    with torch.device("meta"):
        twin = type(model)._from_config(model.config, attn_implementation=model.config._attn_implementation)
    return twin.train()


def twin_batch(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A real model's batch for its `meta_twin`: the same small id, mask and label tensors, on the CPU (as
    `meta_batch` makes them), so that only the model's own tensors are on the meta device."""
    return {k: v.cpu() for k, v in batch.items()}


def meta_batch(model: PreTrainedModel, batch_size: int, seq_len: int, *, scored: int | None = None,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of `batch_size` full rows of `seq_len` tokens for a meta-device model.

    The token ids and labels are real, small CPU tensors: models look at id values (a pad-token check) and the loss
    at which positions are labelled, while everything the size of the model stays on the meta device. There is no
    padding, so no attention mask. Every position is scored, as in transformers' own loss; `scored` labels only the
    last `scored` positions of each row (a prompt followed by its summary), where `flops.model_loss` runs a causal
    LM's output head. Encoder-decoders get targets of `seq_len` tokens too, as `data.sample_batches` pads them (the
    model shifts them into its decoder's input).
    """
    for label, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label}={value!r} must be a whole number >= 1")
    if scored is not None and not 1 <= scored <= seq_len:
        raise ValueError(f"scored={scored!r} must be between 1 and seq_len={seq_len}")
    config = model.config
    vocab = config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator)
    pad = getattr(config, "pad_token_id", None)
    if isinstance(pad, int):
        ids[ids == pad] = (pad + 1) % vocab  # no padding anywhere
    labels = ids.clone()
    if scored is not None:
        labels[:, : seq_len - scored] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels}
