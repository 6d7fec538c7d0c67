"""Mixed precision on the CPU: the cost model under autocast, bf16 and fp16 runs, and fp16's skipped steps."""

import numpy as np
import pytest
import torch

from conftest import TINY, token_batch
from greencore import measure_training_flops, profile_model
from greencore.records import load_run
from greencore.training import TrainConfig, train
from greencore.training.precision import Precision, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", TINY)
def test_predicted_flops_equal_measured_under_bf16_autocast(tiny_models, name):
    """FlopCounterMode counts by shape, so the profile made under autocast is the fp32 one, and its predictions
    still equal a bf16 step's measurement for any selection."""
    model, _ = tiny_models(name)
    batch = token_batch(model, batch_size=2, seq_len=32)
    plain = profile_model(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        profile = profile_model(model, batch)
        assert profile.names == plain.names and profile.t_fp == plain.t_fp
        np.testing.assert_array_equal(profile.t_dw, plain.t_dw)
        np.testing.assert_array_equal(profile.t_dy, plain.t_dy)
        rng = np.random.default_rng(0)
        for mask in [np.ones(len(profile), bool)] + [rng.random(len(profile)) < 0.4 for _ in range(4)]:
            measured = measure_training_flops(model, batch, mask, names=profile.names)
            assert profile.t_fp + profile.backward_flops(mask) == pytest.approx(measured["total"], rel=0.02)


def test_resolve_precision():
    assert resolve_precision("auto", CPU) == "fp32"  # no autocast on a CPU unless asked
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="--precision 'fp8'"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(model="tiny-gpt2", precision="half")


def test_fp16_skips_a_step_whose_gradients_overflow_and_counts_it():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 4)
    before = layer.weight.detach().clone()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    p = Precision("fp16", CPU)
    p.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # the scaled fp16 gradients overflow
    with p.autocast():
        loss = layer(torch.randn(3, 4)).float().pow(2).sum()
    p.backward(loss)
    assert not p.step(optimizer, list(layer.parameters()), max_grad_norm=1.0)
    assert p.skipped_steps == 1 and torch.equal(layer.weight, before)  # skipped: the weights did not move
    assert p.scaler.get_scale() == 2.0**126  # backed off
    optimizer.zero_grad()
    p.scaler.update(1024.0)  # a scale the gradients fit in
    with p.autocast():
        loss = layer(torch.randn(3, 4)).float().pow(2).sum()
    p.backward(loss)
    assert p.step(optimizer, list(layer.parameters()), max_grad_norm=1.0)
    assert p.skipped_steps == 1 and not torch.equal(layer.weight, before)
    restored = Precision("fp16", CPU)
    restored.load_state_dict(p.state_dict())
    assert restored.skipped_steps == 1 and restored.scaler.get_scale() == p.scaler.get_scale()


def _config(**kw) -> TrainConfig:
    base = dict(model="tiny-llama", scheme="full", epochs=1, max_train_examples=48, max_eval_examples=8,
                batch_size=8, max_source_tokens=48, max_target_tokens=24, eval_rouge=False, lr=1e-3, energy=False)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_cost_what_fp32_runs_cost(tmp_path, precision):
    """Full fine-tuning in bf16 and fp16 measures exactly the FLOPs of fp32 (same shapes, same operations), keeps
    fp32 master weights, and records the precision and any skipped steps."""
    fp32 = train(_config(), tmp_path / "fp32")
    half = train(_config(precision=precision), tmp_path / precision)
    assert half["status"] == "finished" and half["precision"] == precision and fp32["precision"] == "fp32"
    assert half["flops_total"] == fp32["flops_total"] and half["flops_ratio"] == 1.0
    assert np.isfinite(half["val_loss"]) and abs(half["val_loss"] - fp32["val_loss"]) < 0.5
    rows = [m for m in load_run(tmp_path / precision).metrics if m["type"] == "train"]
    assert half["skipped_steps"] == sum(r["skipped"] for r in rows)
    assert precision == "fp16" or half["skipped_steps"] == 0


def test_green_selects_and_stays_within_rho_under_bf16(tmp_path):
    summary = train(_config(scheme="green:0.5", precision="bf16"), tmp_path / "green")
    run = load_run(tmp_path / "green")
    assert run.selections and run.selections[0]["predicted_ratio"] <= 0.5 + 1e-9
    assert np.isfinite(run.selections[0]["importance"]).all()
    assert summary["flops_ratio_training"] == pytest.approx(run.selections[0]["predicted_ratio"], abs=0.03)
