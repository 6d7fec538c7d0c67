"""Importance against real optimizer steps taken on a copy of the model, and side-effect freedom bit for bit."""

import copy

import numpy as np
import pytest
import torch

from conftest import token_batch
from greencore import profile_model, select_tensors, tensor_importance
from greencore.flops import flop_counter


@pytest.fixture()
def setup(tiny_models):
    model, _ = tiny_models("tiny-llama")
    model.eval()  # no dropout, so the copy sees the same losses
    batches = [token_batch(model, 2, 16, seed=s) for s in range(3)]
    return model, batches, profile_model(model, batches[0])


def _stepped_importance(model, batches, names, make_optimizer, warmup=()):
    """-sum(g * delta_w) with delta_w taken from a real optimizer.step() on a deep copy, averaged over batches."""
    total = np.zeros(len(names))
    for batch in batches:
        twin = copy.deepcopy(model)
        opt = make_optimizer(twin)
        for warm in warmup:
            opt.zero_grad()
            twin(**warm).loss.backward()
            opt.step()
        params = dict(twin.named_parameters())
        opt.zero_grad()
        twin(**batch).loss.backward()
        before = {n: params[n].detach().clone() for n in names}
        grads = {n: params[n].grad.clone() for n in names}
        opt.step()
        total += [float(-(grads[n] * (params[n].detach() - before[n])).sum()) for n in names]
    return total / len(batches)


def test_taylor_default_matches_a_fresh_adamw_step(setup):
    model, batches, profile = setup
    got = tensor_importance(model, batches, profile=profile)
    expected = _stepped_importance(model, batches, profile.names, lambda m: torch.optim.AdamW(m.parameters()))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-9)
    assert (got > 0).mean() > 0.5


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.AdamW(ps, lr=3e-3, weight_decay=0.1),
    lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=0.01, amsgrad=True),
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
])
def test_taylor_uses_the_optimizer_state_and_leaves_everything_untouched(setup, make):
    model, batches, profile = setup
    warmup = [token_batch(model, 2, 16, seed=10 + s) for s in range(2)]
    work = copy.deepcopy(model)
    optimizer = make(work.parameters())
    for warm in warmup:
        optimizer.zero_grad()
        work(**warm).loss.backward()
        optimizer.step()
    params = dict(work.named_parameters())
    marker = torch.randn_like(params["lm_head.weight"])
    optimizer.zero_grad(set_to_none=True)
    params["lm_head.weight"].grad = marker
    params["model.norm.weight"].requires_grad_(False)
    weights = {n: p.detach().clone() for n, p in params.items()}
    state = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()

    got = tensor_importance(work, batches, optimizer, profile=profile)

    assert all(torch.equal(weights[n], p) for n, p in params.items())
    assert params["lm_head.weight"].grad is marker
    assert all(p.grad is None for n, p in params.items() if n != "lm_head.weight")
    assert not params["model.norm.weight"].requires_grad
    assert all(p.requires_grad for n, p in params.items() if n != "model.norm.weight")
    after = optimizer.state_dict()
    for key, st in state["state"].items():
        for field, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][key][field]))
    assert torch.equal(rng, torch.get_rng_state())

    params["model.norm.weight"].requires_grad_(True)
    expected = _stepped_importance(model, batches, profile.names, lambda m: make(m.parameters()), warmup)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-9)


def test_gradient_metrics_by_hand(setup):
    model, batches, profile = setup
    params = dict(model.named_parameters())
    l1 = np.zeros(len(profile))
    sq = np.zeros(len(profile))
    for batch in batches:
        grads = torch.autograd.grad(model(**batch).loss, [params[n] for n in profile.names])
        l1 += [float(g.abs().sum()) for g in grads]
        sq += [float((g * g).sum()) for g in grads]
    np.testing.assert_allclose(tensor_importance(model, batches, metric="grad_l1", profile=profile), l1 / 3, rtol=1e-5)
    np.testing.assert_allclose(tensor_importance(model, batches, metric="fisher", profile=profile), sq / 3, rtol=1e-5)
    mag = tensor_importance(model, batches, metric="magnitude", profile=profile)
    np.testing.assert_allclose(mag, [float(params[n].detach().abs().sum()) for n in profile.names], rtol=1e-6)
    r1 = tensor_importance(model, batches, metric="random", profile=profile, seed=1)
    assert np.array_equal(r1, tensor_importance(model, batches, metric="random", profile=profile, seed=1))
    assert not np.array_equal(r1, tensor_importance(model, batches, metric="random", profile=profile, seed=2))


def test_profiles_itself_when_no_profile_is_given(setup):
    model, batches, profile = setup
    got = tensor_importance(model, batches[:1], metric="grad_l1")
    np.testing.assert_allclose(got, tensor_importance(model, batches[:1], metric="grad_l1", profile=profile))


def test_bad_input(setup):
    model, batches, profile = setup
    with pytest.raises(ValueError, match="unknown importance metric"):
        tensor_importance(model, batches, metric="hessian", profile=profile)
    with pytest.raises(ValueError, match="probe batch"):
        tensor_importance(model, [], metric="taylor", profile=profile)
    with pytest.raises(ValueError, match="does not hold"):
        tensor_importance(model, batches, torch.optim.AdamW([next(model.parameters())]), profile=profile)
    with pytest.raises(ValueError, match="supports Adam"):
        tensor_importance(model, batches, torch.optim.RMSprop(model.parameters()), profile=profile)


def test_weights_and_the_reduce_hook_are_what_the_distributed_path_uses(setup):
    """A reduce hook that sums two identical 'ranks' (doubles every gradient) and per-batch weights of 1/2 give
    back the single-process scores: the distributed path is this function with these two arguments."""
    model, batches, profile = setup
    plain = tensor_importance(model, batches, metric="grad_l1", profile=profile)

    def two_ranks(grads, loss):
        for g in grads:
            g.mul_(2)
        return float(loss) * 2

    halves = tensor_importance(model, batches, metric="grad_l1", profile=profile,
                               weights=[0.5] * len(batches), reduce=two_ranks)
    np.testing.assert_allclose(halves, plain, rtol=1e-6)
    doubled = tensor_importance(model, batches, metric="grad_l1", profile=profile, reduce=two_ranks)
    np.testing.assert_allclose(doubled, 2 * plain, rtol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        tensor_importance(model, batches, metric="grad_l1", profile=profile, weights=[1.0] * (len(batches) + 1))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5", "tiny-opt"])
def test_probes_at_rho_score_every_selectable_tensor_for_less(tiny_models, name):
    """With rho, the probe scores exactly the tensors a selection at rho can hold (the selection is unchanged) and
    its measured FLOPs are what the profile predicts of a step training all of them: less than a full probe."""
    model, _ = tiny_models(name)
    model.eval()
    batches = [token_batch(model, 2, 16, seed=s) for s in range(2)]
    profile = profile_model(model, batches[0])
    alone = (profile.t_fp + profile.single_tensor_costs()) / profile.full_flops  # rho to train each tensor alone
    for share in (0.3, 0.6):
        rho = float(np.quantile(alone, share))
        within = profile.within_reach(rho)
        assert within.any() and not within.all()
        with flop_counter() as whole:
            full = tensor_importance(model, batches, profile=profile)
        with flop_counter() as cut:
            part = tensor_importance(model, batches, profile=profile, rho=rho)
        np.testing.assert_allclose(part[within], full[within], rtol=1e-5, atol=1e-12)
        assert (part[~within] == 0).all()
        assert select_tensors(profile, part, rho).mask.tolist() == select_tensors(profile, full, rho).mask.tolist()
        assert cut.get_total_flops() == pytest.approx(len(batches) * profile.step_flops(within), rel=0.02)
        assert cut.get_total_flops() < whole.get_total_flops()
    assert all(p.requires_grad for p in model.parameters())  # flags restored
