"""The profiler against FlopCounterMode measurements and against independently observed execution order."""

import numpy as np
import pytest
import torch

from conftest import TINY, token_batch
from greencore import measure_training_flops, profile_model


def _random_masks(n: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    eye = np.eye(n, dtype=bool)
    masks = [eye[0], eye[-1], np.ones(n, dtype=bool)]
    masks += [rng.random(n) < rng.uniform(0.05, 0.9) for _ in range(count)]
    return masks


@pytest.mark.parametrize("name", TINY + ["minilm"])
def test_prediction_matches_measured_flops(tiny_models, name):
    model, _ = tiny_models(name)
    batch = token_batch(model, batch_size=2, seq_len=64)
    profile = profile_model(model, batch)
    for mask in _random_masks(len(profile), 20, seed=1):
        measured = measure_training_flops(model, batch, mask, names=profile.names)
        predicted = profile.t_fp + profile.backward_flops(mask)
        assert measured["forward"] == pytest.approx(profile.t_fp, rel=1e-9)
        assert predicted == pytest.approx(measured["total"], rel=0.02)
        # the chain the selector optimises never under-estimates the real cost
        assert profile.chain_cost(mask) >= profile.backward_flops(mask) - 1e-6


@pytest.mark.parametrize("name", TINY)
def test_full_step_equals_chain_totals(tiny_models, name):
    model, _ = tiny_models(name)
    batch = token_batch(model)
    profile = profile_model(model, batch)
    measured = measure_training_flops(model, batch, profile.names)
    assert profile.full_flops == pytest.approx(measured["total"], rel=0.02)
    assert 0.25 < profile.min_rho < 0.5


def _module_call_order(model, batch) -> dict[str, int]:
    """Time of the last call of every leaf module, observed with forward hooks (independent of the profiler)."""
    order, clock, handles = {}, [0], []
    for mod_name, module in model.named_modules():
        if not list(module.children()):
            def hook(_m, _i, _o, mod_name=mod_name):
                order[mod_name] = clock[0]
                clock[0] += 1
            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    return order


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama", "tiny-gpt2"])
def test_order_is_backprop_execution_order(tiny_models, name):
    model, _ = tiny_models(name)
    batch = token_batch(model)
    profile = profile_model(model, batch)
    called = _module_call_order(model, batch)
    shared = {id(p) for p in model.get_input_embeddings().parameters()}
    times = [called[n.rsplit(".", 1)[0]] for n in profile.names
             if id(dict(model.named_parameters())[n]) not in shared]
    assert times == sorted(times, reverse=True)
    assert set(profile.names) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_opt_order_details(tiny_models):
    model, _ = tiny_models("tiny-opt")
    profile = profile_model(model, token_batch(model))
    names = profile.names
    # the tied LM head runs last in the forward pass, so it is nearest the loss; the final norm comes next
    assert names[0] == "model.decoder.embed_tokens.weight"
    assert {names[1], names[2]} == {"model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias"}
    # q, k, v run in that order, so backprop meets v, then k, then q
    pos = {n: i for i, n in enumerate(names)}
    layer = "model.decoder.layers.0.self_attn."
    assert pos[layer + "v_proj.weight"] < pos[layer + "k_proj.weight"] < pos[layer + "q_proj.weight"]
    # the tied tensor is also the input embedding: training it needs the activation gradient through everything
    assert profile.reach[0] == len(names)


def test_weight_gradient_flops_by_hand(tiny_models):
    model, _ = tiny_models("tiny-opt")
    b, seq = 2, 32
    profile = profile_model(model, token_batch(model, b, seq))
    cfg = model.config
    fc1 = profile.names.index("model.decoder.layers.1.fc1.weight")
    assert profile.t_dw[fc1] == 2 * b * seq * cfg.hidden_size * cfg.ffn_dim
    # its input gradient (a matmul of the same size) is charged to its own chain position
    assert profile.t_dy[fc1] == 2 * b * seq * cfg.hidden_size * cfg.ffn_dim
    bias = profile.names.index("model.decoder.layers.1.fc1.bias")
    assert profile.t_dw[bias] == 0  # a sum: FlopCounterMode counts elementwise work as 0


def test_sdpa_attention_is_counted_on_cpu():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                    word_embed_proj_dim=32, max_position_embeddings=128, attn_implementation="sdpa")
    model = OPTForCausalLM(cfg)
    batch = token_batch(model, 2, 16)
    profile = profile_model(model, batch)
    # q@k^T and p@v: 2 * (2*B*L*L*hidden) on top of the projections
    b, L, h = 2, 16, 32
    attention = 2 * (2 * b * L * L * h)
    linears = 2 * b * L * (4 * h * h + 2 * h * 64) + 2 * b * L * h * 256
    assert profile.t_fp == linears + attention
    for mask in _random_masks(len(profile), 5, seed=3):
        measured = measure_training_flops(model, batch, mask, names=profile.names)
        assert profile.step_flops(mask) == pytest.approx(measured["total"], rel=1e-9)


def test_frozen_tensors_are_left_out_and_state_is_untouched(tiny_models):
    model, _ = tiny_models("tiny-llama")
    batch = token_batch(model)
    frozen = "model.layers.0.mlp.up_proj.weight"
    params = dict(model.named_parameters())
    params[frozen].requires_grad_(False)
    before = {n: p.detach().clone() for n, p in params.items()}
    rng = torch.get_rng_state()
    try:
        profile = profile_model(model, batch)
    finally:
        params[frozen].requires_grad_(True)
    assert frozen not in profile.names and len(profile) == len(params) - 1
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[n], p) for n, p in params.items())
    assert all(p.grad is None for p in params.values())


def test_measure_restores_requires_grad_and_grad(tiny_models):
    model, _ = tiny_models("tiny-gpt2")
    batch = token_batch(model)
    params = dict(model.named_parameters())
    marker = torch.full_like(params["transformer.ln_f.weight"], 7.0)
    params["transformer.ln_f.weight"].grad = marker
    params["transformer.wpe.weight"].requires_grad_(False)
    try:
        flops = measure_training_flops(model, batch, {"transformer.h.1.mlp.c_fc.weight"})
        assert flops["backward"] > 0 and flops["total"] == flops["forward"] + flops["backward"]
        assert params["transformer.ln_f.weight"].grad is marker
        assert not params["transformer.wpe.weight"].requires_grad
        assert all(p.grad is None for n, p in params.items() if n != "transformer.ln_f.weight")
    finally:
        params["transformer.wpe.weight"].requires_grad_(True)
        params["transformer.ln_f.weight"].grad = None


def test_bad_input(tiny_models):
    model, _ = tiny_models("tiny-gpt2")
    batch = token_batch(model)
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    with pytest.raises(ValueError, match="labels"):
        profile_model(model, no_labels)
    with pytest.raises(ValueError, match="names"):
        measure_training_flops(model, batch, np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="not parameters"):
        measure_training_flops(model, batch, {"no.such.weight"})
    profile = profile_model(model, batch)
    with pytest.raises(ValueError, match="shape"):
        profile.backward_flops(np.ones(2, dtype=bool))
