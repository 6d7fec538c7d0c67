"""Fused attention (SDPA) and activation checkpointing: what they cost, measured and predicted, and that training
with them is the same training.

The expectations are counted by hand from the tiny configs (hidden 128, 4 heads of 32, FFN 512, 4 layers): a fused
attention backward recomputes the scores, one Q·Kᵀ product of 2·b·heads·s_q·s_k·head_dim FLOPs per call; activation
checkpointing recomputes each block the backward enters, up to the last activation its backward needs (LLaMA: the
block's forward without its MLP down projection, whose output no backward needs).
"""

import numpy as np
import pytest
import torch

from conftest import token_batch
from greencore import measure_training_flops, profile_model
from greencore.models import load_model, set_attention
from greencore.records import load_run
from greencore.training import TrainConfig, train
from greencore.training.setup import _checkpoint_activations

CPU = torch.device("cpu")
B, S, HEADS, HEAD_DIM, HIDDEN, FFN, LAYERS = 2, 32, 4, 32, 128, 512, 4


def score_product(s_q: int, s_k: int) -> int:
    """FLOPs of one Q·Kᵀ product over the batch: what a fused attention backward recomputes."""
    return 2 * B * HEADS * s_q * s_k * HEAD_DIM


# GPT-2 trains with attention dropout, which the CPU's fused kernel does not take: SDPA then runs its unfused (math)
# kernel, which costs what eager attention costs
@pytest.mark.parametrize("name, fused_calls", [("tiny-opt", LAYERS), ("tiny-llama", LAYERS), ("tiny-gpt2", 0)])
def test_sdpa_costs_one_score_product_more_per_fused_call_and_the_profile_predicts_it(name, fused_calls):
    model, _ = load_model(name)
    model.train()
    batch = token_batch(model, batch_size=B, seq_len=S)
    eager = profile_model(model, batch)
    assert set_attention(model, "sdpa", CPU) == "sdpa"
    fused = profile_model(model, batch)
    assert fused.names == eager.names and fused.t_fp == eager.t_fp
    np.testing.assert_array_equal(fused.t_dw, eager.t_dw)  # attention has no weights: only activation gradients move
    every = np.ones(len(fused), bool)
    assert fused.step_flops(every) - eager.step_flops(every) == fused_calls * score_product(S, S)
    rng = np.random.default_rng(0)
    for mask in [every] + [rng.random(len(fused)) < 0.4 for _ in range(3)]:
        assert measure_training_flops(model, batch, mask, names=fused.names)["total"] == fused.step_flops(mask)


def test_sdpa_on_t5_runs_the_fused_kernel_only_where_the_position_bias_is_frozen():
    """T5 feeds its learned position bias to attention as a mask; SDPA takes its unfused kernel while that mask
    needs a gradient. The profile traces with every tensor trainable, so a step that freezes the biases runs the
    fused kernel in every self-attention and costs one score product more per call than predicted. Without dropout
    (eval mode here; T5 trains with dropout, which keeps the CPU on the unfused kernel throughout)."""
    model, _ = load_model("tiny-t5")
    batch = token_batch(model, batch_size=B, seq_len=S)
    set_attention(model, "sdpa", CPU)
    profile = profile_model(model, batch)
    every = np.ones(len(profile), bool)
    assert measure_training_flops(model, batch, every, names=profile.names)["total"] == profile.step_flops(every)
    biases_frozen = np.array(["relative_attention_bias" not in n for n in profile.names])
    assert biases_frozen.sum() == len(profile) - 2  # one bias in the encoder, one in the decoder
    target = batch["labels"].shape[1]
    recomputed = 2 * score_product(S, S) + 2 * score_product(target, target)  # 2 encoder + 2 decoder layers
    measured = measure_training_flops(model, batch, biases_frozen, names=profile.names)["total"]
    assert measured - profile.step_flops(biases_frozen) == recomputed


def test_set_attention_resolves_auto_and_refuses_what_a_model_cannot_run():
    model, _ = load_model("tiny-llama")
    assert set_attention(model, "auto", CPU) == "eager"  # a CPU keeps the exact, unfused kernels by default
    with pytest.raises(ValueError, match="--attention 'flash'"):
        set_attention(model, "flash", CPU)
    bloom, _ = load_model("tiny-bloom")
    with pytest.raises(ValueError, match="--attention sdpa: BloomForCausalLM cannot"):
        set_attention(bloom, "sdpa", CPU)
    with pytest.raises(ValueError, match="attention"):
        TrainConfig(model="tiny-llama", attention="fused")


def test_checkpointing_recomputes_exactly_the_blocks_the_backward_enters():
    model, _ = load_model("tiny-llama")
    model.train()
    batch = token_batch(model, batch_size=B, seq_len=S)
    profile = profile_model(model, batch)
    _checkpoint_activations(model, "tiny-llama")
    tokens = B * S
    block = 4 * 2 * tokens * HIDDEN * HIDDEN + 3 * 2 * tokens * HIDDEN * FFN + 2 * score_product(S, S)
    recompute = block - 2 * tokens * FFN * HIDDEN  # the down projection's output is needed by no backward
    every = np.ones(len(profile), bool)
    top_two = np.array([not any(f"layers.{i}." in n for i in (0, 1)) and "embed" not in n for n in profile.names])
    for mask, entered in [(every, LAYERS), (top_two, 2)]:
        measured = measure_training_flops(model, batch, mask, names=profile.names)["total"]
        assert measured - profile.step_flops(mask) == entered * recompute


def _run(tmp_path, name, **settings):
    config = TrainConfig(model="tiny-llama", dataset="stdlib-tldr", scheme="green", rho=0.6, interval=1,
                         interval_unit="step", max_steps=3, max_train_examples=48, batch_size=4, eval_rouge=False,
                         max_eval_examples=4, energy=False, lr=1e-3, **settings)
    summary = train(config, tmp_path / name)
    return summary, [r["loss"] for r in load_run(tmp_path / name).metrics if r["type"] == "train"]


def test_training_with_checkpointing_or_sdpa_is_the_same_training_and_the_summary_says_what_ran(tmp_path):
    """Re-selecting every step, so frozen and newly selected tensors meet the recomputation; the losses match the
    plain run's, and the summary reports the kernels and by how much the prediction missed the measurement."""
    plain, plain_losses = _run(tmp_path, "plain")
    checkpointed, checkpointed_losses = _run(tmp_path, "checkpointed", gradient_checkpointing=True)
    fused, fused_losses = _run(tmp_path, "fused", attention="sdpa")
    assert plain["attention"] == "eager" and fused["attention"] == "sdpa" and checkpointed["gradient_checkpointing"]
    np.testing.assert_allclose(checkpointed_losses, plain_losses, rtol=1e-5)
    np.testing.assert_allclose(fused_losses, plain_losses, rtol=1e-4)
    assert plain["prediction_miss"] == 0 and fused["prediction_miss"] == 0  # the cost model is exact here
    # the recomputation is measured and is what the prediction misses: at most one forward pass per step
    assert checkpointed["flops_training"] > plain["flops_training"]
    assert 0 < checkpointed["prediction_miss"] < 1
