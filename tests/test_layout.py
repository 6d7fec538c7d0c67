"""Heatmap layout: every tensor placed in the right stack, block and canonical type across architectures."""

from collections import Counter

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import TINY
from greencore.layout import TensorLayout, tensor_layout

# name -> number of transformer blocks per stack, read off the built-in configs
BLOCKS = {
    "tiny-opt": {"none": 4},
    "tiny-bloom": {"none": 4},
    "tiny-gpt2": {"none": 4},
    "tiny-llama": {"none": 4},
    "tiny-t5": {"encoder": 2, "decoder": 2},
    "minilm": {"none": 6},
    "minilm-seq2seq": {"encoder": 6, "decoder": 6},
}

SPOT_CHECKS = {
    "tiny-opt": {
        "model.decoder.layers.1.self_attn.q_proj.weight": ("none", 1, "q.weight"),
        "model.decoder.layers.1.self_attn.out_proj.bias": ("none", 1, "attn_out.bias"),
        "model.decoder.layers.3.self_attn_layer_norm.weight": ("none", 3, "attn_norm.weight"),
        "model.decoder.layers.0.final_layer_norm.bias": ("none", 0, "mlp_norm.bias"),
        "model.decoder.layers.2.fc1.weight": ("none", 2, "mlp_in.weight"),
        "model.decoder.layers.2.fc2.weight": ("none", 2, "mlp_out.weight"),
        "model.decoder.final_layer_norm.weight": ("none", None, "norm.weight"),
        "model.decoder.embed_tokens.weight": ("none", None, "embed.weight"),
        "model.decoder.embed_positions.weight": ("none", None, "pos_embed.weight"),
    },
    "tiny-gpt2": {
        "transformer.h.0.attn.c_attn.weight": ("none", 0, "qkv.weight"),
        "transformer.h.0.attn.c_proj.weight": ("none", 0, "attn_out.weight"),
        "transformer.h.0.mlp.c_fc.bias": ("none", 0, "mlp_in.bias"),
        "transformer.h.0.mlp.c_proj.weight": ("none", 0, "mlp_out.weight"),
        "transformer.h.3.ln_1.weight": ("none", 3, "attn_norm.weight"),
        "transformer.h.3.ln_2.weight": ("none", 3, "mlp_norm.weight"),
        "transformer.ln_f.bias": ("none", None, "norm.bias"),
        "transformer.wpe.weight": ("none", None, "pos_embed.weight"),
    },
    "tiny-llama": {
        "model.layers.2.mlp.gate_proj.weight": ("none", 2, "mlp_gate.weight"),
        "model.layers.2.mlp.up_proj.weight": ("none", 2, "mlp_in.weight"),
        "model.layers.2.mlp.down_proj.weight": ("none", 2, "mlp_out.weight"),
        "model.layers.2.self_attn.o_proj.weight": ("none", 2, "attn_out.weight"),
        "model.layers.2.input_layernorm.weight": ("none", 2, "attn_norm.weight"),
        "model.layers.2.post_attention_layernorm.weight": ("none", 2, "mlp_norm.weight"),
        "model.norm.weight": ("none", None, "norm.weight"),
        "lm_head.weight": ("none", None, "lm_head.weight"),
    },
    "tiny-bloom": {
        "transformer.h.1.self_attention.query_key_value.weight": ("none", 1, "qkv.weight"),
        "transformer.h.1.self_attention.dense.weight": ("none", 1, "attn_out.weight"),
        "transformer.h.1.mlp.dense_h_to_4h.weight": ("none", 1, "mlp_in.weight"),
        "transformer.h.1.mlp.dense_4h_to_h.bias": ("none", 1, "mlp_out.bias"),
        "transformer.word_embeddings_layernorm.weight": ("none", None, "embed_norm.weight"),
    },
    "tiny-t5": {
        "shared.weight": ("none", None, "embed.weight"),
        "encoder.block.0.layer.0.SelfAttention.q.weight": ("encoder", 0, "q.weight"),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": ("encoder", 0, "rel_pos.weight"),
        "encoder.block.1.layer.0.layer_norm.weight": ("encoder", 1, "attn_norm.weight"),
        "encoder.block.1.layer.1.layer_norm.weight": ("encoder", 1, "mlp_norm.weight"),
        "encoder.block.1.layer.1.DenseReluDense.wi.weight": ("encoder", 1, "mlp_in.weight"),
        "encoder.final_layer_norm.weight": ("encoder", None, "norm.weight"),
        "decoder.block.1.layer.0.SelfAttention.o.weight": ("decoder", 1, "attn_out.weight"),
        "decoder.block.1.layer.1.EncDecAttention.k.weight": ("decoder", 1, "cross_k.weight"),
        "decoder.block.1.layer.1.EncDecAttention.o.weight": ("decoder", 1, "cross_out.weight"),
        "decoder.block.1.layer.1.layer_norm.weight": ("decoder", 1, "cross_norm.weight"),
        "decoder.block.1.layer.2.DenseReluDense.wo.weight": ("decoder", 1, "mlp_out.weight"),
        "decoder.block.1.layer.2.layer_norm.weight": ("decoder", 1, "mlp_norm.weight"),
    },
    "minilm": {
        "bert.embeddings.word_embeddings.weight": ("none", None, "embed.weight"),
        "bert.embeddings.token_type_embeddings.weight": ("none", None, "type_embed.weight"),
        "bert.embeddings.LayerNorm.bias": ("none", None, "embed_norm.bias"),
        "bert.encoder.layer.5.attention.self.key.bias": ("none", 5, "k.bias"),
        "bert.encoder.layer.5.attention.output.dense.weight": ("none", 5, "attn_out.weight"),
        "bert.encoder.layer.5.attention.output.LayerNorm.weight": ("none", 5, "attn_norm.weight"),
        "bert.encoder.layer.5.intermediate.dense.weight": ("none", 5, "mlp_in.weight"),
        "bert.encoder.layer.5.output.dense.weight": ("none", 5, "mlp_out.weight"),
        "bert.encoder.layer.5.output.LayerNorm.weight": ("none", 5, "mlp_norm.weight"),
        "cls.predictions.transform.dense.weight": ("none", None, "head_transform.weight"),
        "cls.predictions.transform.LayerNorm.weight": ("none", None, "head_norm.weight"),
        "cls.predictions.bias": ("none", None, "lm_head.bias"),
    },
    "minilm-seq2seq": {
        "encoder.embeddings.word_embeddings.weight": ("encoder", None, "embed.weight"),
        "encoder.encoder.layer.2.attention.self.query.weight": ("encoder", 2, "q.weight"),
        "decoder.bert.embeddings.word_embeddings.weight": ("decoder", None, "embed.weight"),
        "decoder.bert.encoder.layer.2.attention.self.query.weight": ("decoder", 2, "q.weight"),
        "decoder.bert.encoder.layer.2.crossattention.self.query.weight": ("decoder", 2, "cross_q.weight"),
        "decoder.bert.encoder.layer.2.crossattention.self.value.bias": ("decoder", 2, "cross_v.bias"),
        "decoder.bert.encoder.layer.2.crossattention.output.dense.weight": ("decoder", 2, "cross_out.weight"),
        "decoder.bert.encoder.layer.2.crossattention.output.LayerNorm.bias": ("decoder", 2, "cross_norm.bias"),
        "decoder.cls.predictions.transform.dense.bias": ("decoder", None, "head_transform.bias"),
    },
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_every_tensor_is_placed(tiny_models, name):
    model, _ = tiny_models(name)
    names = [n for n, _ in model.named_parameters()]
    layouts = tensor_layout(model, names)
    assert [lay.name for lay in layouts] == names
    blocks = {
        stack: len({lay.block for lay in layouts if lay.stack == stack and lay.block is not None})
        for stack in {lay.stack for lay in layouts}
    }
    assert {stack: count for stack, count in blocks.items() if count} == BLOCKS[name]
    keys = Counter((lay.stack, lay.block, lay.type) for lay in layouts)
    assert max(keys.values()) == 1, "types are unique within one (stack, block)"
    assert not any("#" in lay.type for lay in layouts), "real models need no collision suffixes"
    assert all(lay.type.endswith((".weight", ".bias")) for lay in layouts)
    # every block of one stack holds the same tensor types (T5 keeps its relative positions in block 0 only)
    for stack in BLOCKS[name]:
        per_block: dict[int, set[str]] = {}
        for lay in layouts:
            if lay.stack == stack and lay.block is not None and lay.type != "rel_pos.weight":
                per_block.setdefault(lay.block, set()).add(lay.type)
        assert len({frozenset(types) for types in per_block.values()}) == 1


@pytest.mark.parametrize("name", list(SPOT_CHECKS))
def test_spot_checks(tiny_models, name):
    model, _ = tiny_models(name)
    expected = SPOT_CHECKS[name]
    layouts = tensor_layout(model, list(expected))
    assert {lay.name: (lay.stack, lay.block, lay.type) for lay in layouts} == expected


def test_tied_alias_names_resolve(tiny_models):
    model, _ = tiny_models("tiny-opt")
    (head,) = tensor_layout(model, ["lm_head.weight"])
    assert (head.stack, head.block, head.type) == ("none", None, "lm_head.weight")
    model, _ = tiny_models("minilm")
    layouts = tensor_layout(model, ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"])
    assert [lay.type for lay in layouts] == ["lm_head.weight", "lm_head.bias"]


def test_gpt2_cross_attention():
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, add_cross_attention=True)
    model = GPT2LMHeadModel(config)
    expected = {
        "transformer.h.1.crossattention.q_attn.weight": "cross_q.weight",
        "transformer.h.1.crossattention.c_attn.weight": "cross_kv.weight",
        "transformer.h.1.crossattention.c_proj.bias": "cross_out.bias",
        "transformer.h.1.ln_cross_attn.weight": "cross_norm.weight",
        "transformer.h.1.attn.c_attn.weight": "qkv.weight",
    }
    assert [lay.type for lay in tensor_layout(model, list(expected))] == list(expected.values())


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.inner = nn.Module()
        self.inner.proj = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))


class _Plain(nn.Module):
    """No transformers metadata: blocks come from the longest homogeneous ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.ModuleList([nn.Linear(4, 4), nn.ReLU()])
        self.blocks = nn.ModuleList([_Block() for _ in range(3)])
        self.head = nn.Linear(4, 2)


def test_generic_fallback_and_collision_suffix():
    model = _Plain()
    names = [n for n, _ in model.named_parameters()]
    got = {lay.name: (lay.stack, lay.block, lay.type) for lay in tensor_layout(model, names)}
    assert got["blocks.2.proj.weight"] == ("none", 2, "proj.weight")
    assert got["blocks.2.inner.proj.weight"] == ("none", 2, "proj.weight#2")
    assert got["blocks.2.inner.proj.bias"] == ("none", 2, "proj.bias#2")
    assert got["blocks.0.scale"] == ("none", 0, "scale")
    assert got["stem.0.weight"] == ("none", None, "0.weight")
    assert got["head.weight"] == ("none", None, "head.weight")


def test_to_dict():
    layout = TensorLayout(name="a.b.weight", stack="encoder", block=3, type="q.weight")
    assert layout.to_dict() == {"name": "a.b.weight", "stack": "encoder", "block": 3, "type": "q.weight"}


@pytest.mark.parametrize(
    "bad", ["model.decoder.layers.0.self_attn.q_proj.nope", "model.decoder.layers.0", "not.a.tensor", ""]
)
def test_unknown_names_are_rejected(tiny_models, bad):
    model, _ = tiny_models("tiny-opt")
    with pytest.raises(ValueError, match="not a parameter"):
        tensor_layout(model, [bad])


def test_buffers_are_not_parameters(tiny_models):
    model, _ = tiny_models("minilm")
    with pytest.raises(ValueError, match="named_parameters"):
        tensor_layout(model, ["bert.embeddings.position_ids"])


@pytest.mark.parametrize("name", TINY)
def test_layout_does_not_depend_on_order(tiny_models, name):
    model, _ = tiny_models(name)
    names = [n for n, _ in model.named_parameters()]
    forward = {lay.name: lay for lay in tensor_layout(model, names)}
    backward = {lay.name: lay for lay in tensor_layout(model, names[::-1])}
    assert forward == backward
