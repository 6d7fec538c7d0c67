"""The training loss: a causal LM's output head runs only at scored positions, with the model's own loss and gradients."""

import pytest
import torch

from conftest import TINY, token_batch
from greencore import measure_training_flops, profile_model
from greencore.flops import flop_counter, model_loss, own_loss, scored_positions

DECODERS = [n for n in TINY if n != "tiny-t5"] + ["minilm"]


def _prompted_batch(model, batch_size: int = 3, seq_len: int = 40) -> dict:
    """Rows of different lengths, right-padded, whose first tokens (the prompt) are not scored."""
    batch = token_batch(model, batch_size, seq_len)
    for row, (prompt, length) in enumerate([(10, 40), (25, 31), (5, 12)][:batch_size]):
        batch["labels"][row, :prompt] = -100
        batch["labels"][row, length:] = -100
        batch["attention_mask"][row, length:] = 0
    return batch


def _loss_and_grads(loss_fn, model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        loss = loss_fn(model, batch)
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("name", DECODERS)
def test_scored_head_gives_the_models_own_loss_and_gradients(tiny_models, name):
    model, _ = tiny_models(name)
    model.eval()  # no dropout: both losses see the same network
    batch = _prompted_batch(model)
    ours, our_grads = _loss_and_grads(model_loss, model, batch)
    theirs, their_grads = _loss_and_grads(own_loss, model, batch)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    for a, b in zip(our_grads, their_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "minilm"])
def test_head_flops_saved_are_the_unscored_positions(tiny_models, name):
    model, _ = tiny_models(name)
    batch = _prompted_batch(model)
    scored = int((batch["labels"][:, 1:] != -100).sum())
    assert scored == 43 and scored_positions(model, batch) == 48  # rounded up to a multiple of 8 per row (3 rows)
    with flop_counter() as ours:
        model_loss(model, batch)
    with flop_counter() as theirs:
        own_loss(model, batch)
    head = model.get_output_embeddings()
    rows, cols = batch["input_ids"].shape
    # a Linear(H, V) on n positions costs 2 n H V: the head now runs on 48 positions instead of rows x cols
    saved = 2 * (rows * cols - 48) * head.in_features * head.out_features
    assert theirs.get_total_flops() - ours.get_total_flops() == saved


def test_scored_positions_pad_to_a_multiple(tiny_models):
    model, _ = tiny_models("tiny-gpt2")
    batch = token_batch(model, batch_size=4, seq_len=50)
    assert scored_positions(model, batch) == 0  # every target scored: nothing to save, the model's own loss
    with flop_counter() as ours:
        model_loss(model, batch)
    with flop_counter() as theirs:
        own_loss(model, batch)
    assert ours.get_total_flops() == theirs.get_total_flops()
    batch["labels"][:, :21] = -100  # 4 x 29 = 116 targets left
    assert scored_positions(model, batch) == 128  # the next multiple of 8 x 4 rows
    batch["labels"][:, 1:] = -100
    assert scored_positions(model, batch) == 32  # never zero: the head still runs
    batch = token_batch(model, batch_size=2, seq_len=8)
    batch["labels"][:, :3] = -100  # 2 x 5 targets, rounded up to 16: not fewer than the 14 positions
    assert scored_positions(model, batch) == 0
    seq2seq, _ = tiny_models("tiny-t5")
    assert scored_positions(seq2seq, token_batch(seq2seq)) == 0  # an encoder-decoder uses its own loss


def test_encoder_decoder_and_prefix_tuning_use_their_own_loss(tiny_models):
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    seq2seq, _ = tiny_models("tiny-t5")
    batch = token_batch(seq2seq)
    for fn in (model_loss, own_loss):
        with flop_counter() as counter:
            fn(seq2seq, batch)
        assert counter.get_total_flops() > 0
    seq2seq.eval()
    assert float(model_loss(seq2seq, batch)) == float(own_loss(seq2seq, batch))

    base, _ = tiny_models("tiny-gpt2")
    wrapped = get_peft_model(type(base)(base.config), PrefixTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                                         num_virtual_tokens=4))
    wrapped.eval()
    batch = _prompted_batch(base)
    assert scored_positions(wrapped, batch) == 0
    assert float(model_loss(wrapped, batch)) == float(own_loss(wrapped, batch))


def test_lora_wrapped_model_keeps_the_scored_head(tiny_models):
    from peft import LoraConfig, TaskType, get_peft_model

    base, _ = tiny_models("tiny-gpt2")
    wrapped = get_peft_model(type(base)(base.config), LoraConfig(task_type=TaskType.CAUSAL_LM, r=2))
    wrapped.eval()
    batch = _prompted_batch(base)
    assert scored_positions(wrapped, batch) == 48
    assert float(model_loss(wrapped, batch)) == pytest.approx(float(own_loss(wrapped, batch)), rel=1e-5)


def test_profile_follows_the_loss_it_is_given(tiny_models):
    """The callback profiles with the model's own loss, as transformers.Trainer computes it: costs must match that."""
    model, _ = tiny_models("tiny-opt")
    batch = _prompted_batch(model)
    for loss_fn in (model_loss, own_loss):
        profile = profile_model(model, batch, loss_fn=loss_fn)
        with flop_counter() as forward:
            loss = loss_fn(model, batch)
        with flop_counter() as backward:
            loss.backward()
        model.zero_grad(set_to_none=True)
        assert profile.full_flops == forward.get_total_flops() + backward.get_total_flops()
    assert profile_model(model, batch).full_flops == measure_training_flops(model, batch, profile.names)["total"]
    assert profile_model(model, batch).full_flops < profile.full_flops  # own loss: the head over every position


def test_a_model_that_changes_the_sequence_length_gets_a_clear_error(tiny_models):
    model, _ = tiny_models("tiny-gpt2")
    batch = _prompted_batch(model)

    def drop_first_position(_module, _args, out):
        out.last_hidden_state = out.last_hidden_state[:, 1:]
        return out

    handle = model.transformer.register_forward_hook(drop_first_position)
    try:
        with pytest.raises(ValueError, match="changes the sequence length.*own_loss"):
            model_loss(model, batch)
    finally:
        handle.remove()
    assert model_loss(model, batch).isfinite()  # the hook is gone and the head hook was removed too
