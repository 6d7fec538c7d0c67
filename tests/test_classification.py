"""Sequence classifiers (issue 13): built-ins as classifiers keep their pretrained body under a new head, pool the
last real token whatever the padding, and profile exactly (the head nearest the loss; predictions equal
FlopCounterMode's measurement)."""

import numpy as np
import pytest
import torch

from greencore import measure_training_flops, profile_model
from greencore.models import load_model

CLASSIFIERS = ["tiny-llama", "tiny-gpt2", "tiny-opt", "tiny-bloom", "minilm"]


def _batch(model, pad_first_row: int = 6) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.get_input_embeddings().num_embeddings, (2, 32), generator=g)
    mask = torch.ones_like(ids)
    if pad_first_row:
        ids[0, -pad_first_row:] = model.config.pad_token_id
        mask[0, -pad_first_row:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([1, 3])}


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_keeps_the_body_and_profiles_exactly(name):
    lm, _ = load_model(name)
    model, _ = load_model(name, num_labels=4)
    prefix = model.base_model_prefix + "."
    body = {k: v for k, v in lm.state_dict().items() if k.startswith(prefix)}
    own = model.state_dict()
    assert body and all(torch.equal(own[k], v) for k, v in body.items())  # every pretrained body weight carried over
    head = [k for k in own if k not in lm.state_dict()]
    assert head and model.config.num_labels == 4 and model.config.pad_token_id is not None
    model.train()
    batch = _batch(model)
    profile = profile_model(model, batch)
    assert profile.names[0] in head or profile.names[1] in head  # the new head sits nearest the loss
    rng = np.random.default_rng(0)
    for mask in [np.ones(len(profile), bool)] + [rng.random(len(profile)) < 0.4 for _ in range(3)]:
        assert measure_training_flops(model, batch, mask, names=profile.names)["total"] == profile.step_flops(mask)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_a_decoder_classifies_a_padded_row_as_the_unpadded_one(name):
    model, _ = load_model(name, num_labels=3)
    padded = _batch(model, pad_first_row=6)
    alone = {"input_ids": padded["input_ids"][:1, :-6], "attention_mask": padded["attention_mask"][:1, :-6]}
    with torch.no_grad():
        both = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        single = model(**alone).logits
    torch.testing.assert_close(both[:1], single, rtol=1e-4, atol=1e-5)


def test_bad_classifier_requests_fail_clearly():
    with pytest.raises(ValueError, match="num_labels=1 must be an integer >= 2"):
        load_model("tiny-llama", num_labels=1)
    with pytest.raises(ValueError, match="encoder-decoder"):
        load_model("tiny-t5", num_labels=2)


class _Labelled(torch.utils.data.Dataset):
    """Random token rows with a class label each."""

    def __init__(self, vocab: int, n: int = 16, seq_len: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.rows = [{"input_ids": torch.randint(5, vocab, (seq_len,), generator=g),
                      "attention_mask": torch.ones(seq_len, dtype=torch.long), "labels": torch.tensor(i % 3)}
                     for i in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def test_green_trainer_callback_fine_tunes_a_classifier(tmp_path):
    """The callback needs nothing task-specific: on a classifier under the Trainer it selects within rho, the head
    included, and trains exactly the selection."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    from greencore.callback import GreenTrainerCallback

    model, _ = load_model("tiny-llama", num_labels=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    green = GreenTrainerCallback(rho=0.5, probe_batches=1)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", max_steps=2,
                             per_device_train_batch_size=4, disable_tqdm=True, learning_rate=1e-3)
    Trainer(model=model, args=args, train_dataset=_Labelled(model.get_input_embeddings().num_embeddings),
            data_collator=default_data_collator, callbacks=[green]).train()
    selection = green.selections[0]
    assert 0 < selection["predicted_ratio"] <= 0.5 and "score.weight" in selection["trainable"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(selection["trainable"])
