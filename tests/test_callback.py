"""GreenTrainerCallback in a plain Trainer.train(): what is frozen really stays bit-identical, re-selection follows
its rule, and bad setups fail before the first step."""

import copy
import logging

import pytest
import torch
from transformers import (
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from conftest import token_batch
from greencore import profile_model
from greencore.callback import GreenTrainerCallback


class TokenDataset(torch.utils.data.Dataset):
    """Random token sequences with labels: fixed-length tensors for a decoder, ragged lists for seq2seq."""

    def __init__(self, vocab: int, n: int = 16, seq_len: int = 16, seq2seq: bool = False, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            if seq2seq:
                src = torch.randint(5, vocab, (int(torch.randint(8, seq_len + 1, (1,), generator=g)),), generator=g)
                tgt = torch.randint(5, vocab, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g)
                self.rows.append({"input_ids": src.tolist(), "labels": tgt.tolist()})
            else:
                ids = torch.randint(5, vocab, (seq_len,), generator=g)
                self.rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class WeightRecorder(TrainerCallback):
    """Per optimizer step: the set of tensors requiring grad when it begins, and all weights before and after it.

    Registered after the GreenTrainerCallback, so it sees each step's selection already applied.
    """

    def __init__(self) -> None:
        self.trainable: list[set[str]] = []
        self.weights: list[dict[str, torch.Tensor]] = []  # weights[s]: before step s; weights[-1]: after training

    def _snapshot(self, model) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        assert state.global_step == len(self.trainable)
        self.trainable.append({n for n, p in model.named_parameters() if p.requires_grad})
        self.weights.append(self._snapshot(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.weights.append(self._snapshot(model))


def _trainer(model, tokenizer, tmp_path, callbacks, *, seq2seq=False, max_steps=9, **overrides) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        max_steps=max_steps,
        per_device_train_batch_size=2,
        logging_steps=1,
        disable_tqdm=True,
        **overrides,
    )
    vocab = model.get_input_embeddings().num_embeddings
    collator = DataCollatorForSeq2Seq(tokenizer, model=model) if seq2seq else default_data_collator
    return Trainer(
        model=model,
        args=args,
        train_dataset=TokenDataset(vocab, seq2seq=seq2seq),
        data_collator=collator,
        callbacks=callbacks,
    )


def _selection_steps(max_steps: int, interval: int | None) -> list[int]:
    """The documented rule: at the first step, then at every later step that is a multiple of the interval."""
    return [0] + [s for s in range(1, max_steps) if interval is not None and s % interval == 0]


def _in_effect(selections: list[dict], step: int) -> dict:
    """The selection the optimizer step `step` (0-based) trains with: the latest one made at or before it."""
    return [sel for sel in selections if sel["step"] <= step][-1]


@pytest.mark.parametrize(
    "name, seq2seq, accumulation, metric",
    [("tiny-gpt2", False, 1, "taylor"), ("tiny-t5", True, 2, "random")],
)
def test_training_freezes_exactly_the_unselected_tensors(
    tiny_models, tmp_path, caplog, name, seq2seq, accumulation, metric
):
    base, tokenizer = tiny_models(name)
    model = copy.deepcopy(base)
    rho, interval, max_steps = 0.5, 3, 9
    green = GreenTrainerCallback(rho=rho, interval_steps=interval, probe_batches=2, metric=metric)
    recorder = WeightRecorder()
    trainer = _trainer(
        model,
        tokenizer,
        tmp_path,
        [green, recorder],
        seq2seq=seq2seq,
        max_steps=max_steps,
        gradient_accumulation_steps=accumulation,
    )
    with caplog.at_level(logging.INFO, logger="greencore.callback"):
        trainer.train()

    all_names = {n for n, _ in model.named_parameters()}
    sels = green.selections
    assert [s["step"] for s in sels] == _selection_steps(max_steps, interval)
    assert sum("GreenTrainer selection" in r.getMessage() for r in caplog.records) == len(sels)
    for sel in sels:
        assert sel["rho"] == rho
        assert 0 < sel["predicted_ratio"] <= rho
        assert 0 < len(sel["trainable"]) < len(all_names)

    assert len(recorder.trainable) == max_steps
    for step in range(max_steps):
        trained = recorder.trainable[step]
        assert trained == set(_in_effect(sels, step)["trainable"]), f"step {step} trains another set"
        before, after = recorder.weights[step], recorder.weights[step + 1]
        for n in all_names:
            if n in trained:
                assert not torch.equal(before[n], after[n]), f"selected {n} did not change at step {step}"
            else:
                assert torch.equal(before[n], after[n]), f"frozen {n} changed at step {step}"

    never = all_names - set().union(*(set(s["trainable"]) for s in sels))
    assert never, "rho=0.5 should leave some tensors frozen for the whole run"
    for n in never:
        assert torch.equal(recorder.weights[-1][n], base.get_parameter(n)), f"{n} was never selected but changed"
    if metric == "random":  # importances are redrawn at every selection, so re-selection must freeze trained tensors
        phases = [set(s["trainable"]) for s in sels]
        assert all(prev - cur for prev, cur in zip(phases, phases[1:])), "no tensor was frozen at a re-selection"

    assert all(p.requires_grad for p in model.parameters()), "training end must make every tensor trainable again"
    step_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(step_logs) == max_steps
    for entry in step_logs:
        sel = _in_effect(sels, entry["step"] - 1)
        assert entry["green_predicted_ratio"] == sel["predicted_ratio"]
        assert entry["green_trainable_tensors"] == len(sel["trainable"])


def test_warmup_at_zero_learning_rate_selects_as_without_warmup(tiny_models, tmp_path):
    base, tokenizer = tiny_models("tiny-gpt2")
    chosen = []
    for warmup in (0, 1):
        green = GreenTrainerCallback(rho=0.5, probe_batches=1)
        _trainer(copy.deepcopy(base), tokenizer, tmp_path, [green], max_steps=1, warmup_steps=warmup).train()
        chosen.append(green.selections[0]["trainable"])
    assert chosen[0], "the reference run must select something"
    assert chosen[1] == chosen[0]


def test_optimizer_missing_parameters_raises(tiny_models, tmp_path):
    base, tokenizer = tiny_models("tiny-gpt2")
    model = copy.deepcopy(base)
    model.get_input_embeddings().weight.requires_grad_(False)  # frozen before the Trainer builds its optimizer
    trainer = _trainer(model, tokenizer, tmp_path, [GreenTrainerCallback(rho=0.5)])
    with pytest.raises(ValueError, match="optimizer does not hold 1 parameters"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_rho_that_trains_no_tensor_raises_before_training(tiny_models, tmp_path):
    base, tokenizer = tiny_models("tiny-gpt2")
    model = copy.deepcopy(base)
    min_rho = profile_model(model, token_batch(model, 2, 16)).min_rho
    trainer = _trainer(model, tokenizer, tmp_path, [GreenTrainerCallback(rho=0.9 * min_rho, probe_batches=1)])
    with pytest.raises(ValueError, match="trains no tensor"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, base.get_parameter(n)) for n, p in model.named_parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.5}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": 0.5, "interval_steps": 0}, "interval_steps"),
        ({"rho": 0.5, "interval_steps": 2.0}, "interval_steps"),
        ({"rho": 0.5, "probe_batches": 0}, "probe_batches"),
        ({"rho": 0.5, "metric": "loss"}, "metric"),
        ({"rho": 0.5, "seed": "x"}, "seed"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GreenTrainerCallback(**kwargs)


def test_probes_run_in_the_precision_the_trainer_trains_in(tiny_models, tmp_path):
    """With the Trainer's bf16, the callback's profiling and probe passes run in bf16 like the Trainer's own steps
    (they call the model the Trainer prepared, whose forward accelerate wraps in autocast)."""
    base, tokenizer = tiny_models("tiny-llama")
    model = copy.deepcopy(base)
    dtypes = []
    first = model.model.layers[0].self_attn.q_proj
    first.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    green = GreenTrainerCallback(rho=0.5, probe_batches=2)
    _trainer(model, tokenizer, tmp_path, [green], max_steps=1, bf16=True).train()
    assert green.selections and 0 < green.selections[0]["predicted_ratio"] <= 0.5
    assert len(dtypes) >= 2 + 1 and set(dtypes) == {torch.bfloat16}  # profile, 2 probes, the one step


def test_activation_checkpointing_keeps_the_backward_short(tiny_models, tmp_path):
    """Under the Trainer's (non-reentrant) activation checkpointing the backward still stops at the deepest selected
    tensor: transformers' hook that makes the embeddings' output require grad is removed, so the first block, frozen
    at rho 0.5, runs without grad and its weights stay as they were; reentrant checkpointing is refused."""
    base, tokenizer = tiny_models("tiny-llama")
    model = copy.deepcopy(base)
    needs_grad = []
    model.model.layers[0].register_forward_hook(lambda module, args, out: needs_grad.append(
        (out[0] if isinstance(out, tuple) else out).requires_grad))
    green = GreenTrainerCallback(rho=0.5, probe_batches=1)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    _trainer(model, tokenizer, tmp_path, [green], max_steps=2, activation_checkpointing=True).train()
    trained = {n for s in green.selections for n in s["trainable"]}
    assert trained and not any(".layers.0." in n or "embed" in n for n in trained)
    assert needs_grad and not any(needs_grad[-2:])  # the Trainer's two steps: no gradient flowed into block 0
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before)
    with pytest.raises(ValueError, match="use_reentrant"):
        _trainer(copy.deepcopy(base), tokenizer, tmp_path, [GreenTrainerCallback(rho=0.5)], max_steps=1,
                 activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": True}).train()
