"""A tied weight split into its uses (issue 18, `split_tied`): the head's use priced, trained and scored alone.

The expectations are independent of the split machinery: FlopCounterMode measurements, and gradients computed by
calling the model with `inputs_embeds` taken from a detached embedding (so the weight reaches the loss through the
head alone) or with the head's weight detached by hand.
"""

import numpy as np
import pytest
import torch

from conftest import token_batch
from greencore import measure_training_flops, profile_model, tensor_importance
from greencore.flops import model_loss
from greencore.trainable import set_trainable, tied_aliases

TIED = ["tiny-gpt2", "tiny-opt"]


def _masks(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    eye = np.eye(n, dtype=bool)
    return [eye[0], eye[-1], eye[0] | eye[-1], np.ones(n, bool)] + [rng.random(n) < 0.3 for _ in range(3)]


@pytest.mark.parametrize("name", TIED)
def test_each_use_is_an_entry_and_every_selection_is_predicted_exactly(tiny_models, name):
    model, _ = tiny_models(name)
    batch = token_batch(model)
    whole, split = profile_model(model, batch), profile_model(model, batch, split_tied=True)
    (alias, own), = tied_aliases(model).items()
    assert whole.names[0] == own and whole.reach[0] == len(whole)  # the paper's view: priced by the deepest use
    assert split.names == [alias] + whole.names[1:] + [own]  # the head's use nearest the loss, the embedding's last
    assert split.reach[0] == 0 and split.reach[-1] == len(split) - 1
    # the uses' weight gradients add up to the whole tensor's; the step FLOPs of any selection are what runs
    assert split.t_dw[0] + split.t_dw[-1] == whole.t_dw[0]
    assert split.full_flops == whole.full_flops
    for mask in _masks(len(split), seed=2):
        measured = measure_training_flops(model, batch, mask, names=split.names)
        assert split.step_flops(mask) == measured["total"]
    head_only = measure_training_flops(model, batch, [alias])
    assert head_only["backward"] == split.t_dw[0]  # no activation gradient below the head
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def _head_use_gradient(model, batch, own_weight):
    """The weight's gradient through the head alone: the model called on a detached embedding of the tokens."""
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach()
    rest = {k: v for k, v in batch.items() if k != "input_ids"}
    with torch.random.fork_rng():
        loss = model_loss(_WithEmbeds(model, embeds), rest)
    return torch.autograd.grad(loss, own_weight)[0]


class _WithEmbeds(torch.nn.Module):
    """The model called with fixed input embeddings instead of token ids (model_loss finds its head through it)."""

    def __init__(self, model, embeds):
        super().__init__()
        self.model, self.embeds = model, embeds
        self.config = model.config

    def forward(self, **kw):
        return self.model(inputs_embeds=self.embeds, **kw)


def test_the_head_use_trains_alone_with_its_own_gradient(tiny_models):
    model, _ = tiny_models("tiny-gpt2")
    model.eval()  # no dropout: the gradients compared are of one and the same function
    batch = token_batch(model)
    split = profile_model(model, batch, split_tied=True)
    (alias, own), = tied_aliases(model).items()
    weight = dict(model.named_parameters())[own]
    optimizer = torch.optim.AdamW(model.parameters())
    try:
        set_trainable(model, [alias], optimizer, candidates=split.names)
        expected = _head_use_gradient(model, batch, weight)
        model_loss(model, batch).backward()
        torch.testing.assert_close(weight.grad, expected)
        assert [n for n, p in model.named_parameters() if p.requires_grad] == [own]
        # the embedding's use alone: the whole gradient minus the head's
        weight.grad = None
        set_trainable(model, [own], optimizer, candidates=split.names)
        model_loss(model, batch).backward()
        only_deep = weight.grad.clone()
        weight.grad = None
        set_trainable(model, [own, alias], optimizer, candidates=split.names)
        model_loss(model, batch).backward()
        torch.testing.assert_close(only_deep, weight.grad - expected)
    finally:
        set_trainable(model, [n for n, _ in model.named_parameters()])
        model.train()
    assert model.lm_head.weight is weight  # the modules hold the parameter again


def test_importance_of_each_use_comes_from_its_own_gradient(tiny_models):
    model, _ = tiny_models("tiny-gpt2")
    model.eval()
    batch = token_batch(model)
    split = profile_model(model, batch, split_tied=True)
    (alias, own), = tied_aliases(model).items()
    weight = dict(model.named_parameters())[own]
    scores = tensor_importance(model, [batch], metric="grad_l1", profile=split)
    head = _head_use_gradient(model, batch, weight)
    whole = torch.autograd.grad(model_loss(model, batch), weight)[0]
    assert scores[0] == pytest.approx(float(head.abs().sum()), rel=1e-5)
    assert scores[-1] == pytest.approx(float((whole - head).abs().sum()), rel=1e-5)
    # at a budget that cannot reach the embedding the head's use is still scored, and the embedding's is not
    rho = 0.5
    assert split.within_reach(rho)[0] and not split.within_reach(rho)[-1]
    at_rho = tensor_importance(model, [batch], metric="grad_l1", profile=split, rho=rho)
    assert at_rho[0] == pytest.approx(scores[0], rel=1e-6) and at_rho[-1] == 0
    model.train()
