"""Evaluation: teacher-forced validation loss, ROUGE of generated summaries (with `rouge-score`, offline), and a
classifier's predictions with their accuracy and macro-F1 (with scikit-learn), beside the majority class's."""

from __future__ import annotations

from itertools import groupby
from typing import Sequence

import torch
from rouge_score import rouge_scorer

from .data import collate, encode_labelled, eos_token_id, pad_prompts, pad_token_id, prompt_for_generation, scored_targets
from .flops import model_loss

__all__ = ["classification_scores", "generate_summaries", "predict_classes", "rouge", "validation_loss"]

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@torch.no_grad()
def validation_loss(model: torch.nn.Module, tokenizer, rows: Sequence[dict], *, batch_size: int) -> float:
    """Mean loss per target over `rows` (from `encode_examples` or `encode_labelled`): each batch's mean loss weighted
    by its label tokens, or by its rows for class labels (`scored_targets`)."""
    if not rows:
        raise ValueError("no validation rows to evaluate")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    is_enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    total, count = 0.0, 0
    try:
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate(tokenizer, part).items()}
            n = sum(scored_targets(r, is_enc_dec) for r in part)
            total += float(model_loss(model, batch)) * n
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def generate_summaries(model: torch.nn.Module, tokenizer, sources: Sequence[str], *, max_source_tokens: int,
                       max_new_tokens: int, num_beams: int = 2, batch_size: int = 8, prompt: str = "tldr") -> list[str]:
    """Summaries generated with beam search (greedy for num_beams=1), in the order of `sources`.

    Prompts of equal length are batched together, so no prompt needs padding: not every architecture shifts its
    positions for left padding (BERT-style decoders don't), and this way every model sees exactly its prompt.
    """
    is_enc_dec = bool(model.config.is_encoder_decoder)
    prompts = prompt_for_generation(tokenizer, sources, is_encoder_decoder=is_enc_dec,
                                    max_source_tokens=max_source_tokens, prompt=prompt)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: dict[int, str] = {}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    try:
        for _, same in groupby(order, key=lambda i: len(prompts[i])):
            same = list(same)
            for start in range(0, len(same), batch_size):
                chunk = same[start:start + batch_size]
                inputs = pad_prompts(tokenizer, [prompts[i] for i in chunk], is_encoder_decoder=is_enc_dec)
                inputs = {k: v.to(device) for k, v in inputs.items()}
                generated = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                           do_sample=False, eos_token_id=eos_token_id(tokenizer),
                                           pad_token_id=pad_token_id(tokenizer))
                new = generated if is_enc_dec else generated[:, inputs["input_ids"].shape[1]:]
                for i, ids in zip(chunk, new):
                    outputs[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return [outputs[i] for i in range(len(prompts))]


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures, in percent, as the paper reports them."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {key: 100 * value / len(predictions) for key, value in totals.items()}


@torch.no_grad()
def predict_classes(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, max_tokens: int,
                    batch_size: int = 8) -> list[int]:
    """The class index a sequence classifier gives each text (the argmax of its logits), encoded as training
    encodes it (`encode_labelled`), in the order of `texts`."""
    rows, _ = encode_labelled(tokenizer, texts, [0] * len(texts), max_tokens=max_tokens)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predictions: list[int] = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate(tokenizer, rows[start:start + batch_size])
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
                           ).logits
            predictions.extend(int(i) for i in logits.argmax(dim=-1))
    finally:
        model.train(was_training)
    return predictions


def classification_scores(predictions: Sequence[int], references: Sequence[int], *, majority: int,
                          num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 in percent, and the same two for always predicting `majority` (the training split's
    commonest class): the floor a classifier must clear. Macro-F1 averages over all `num_labels` classes, so a
    class the model never predicts counts as 0."""
    from sklearn.metrics import accuracy_score, f1_score

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    labels = list(range(num_labels))
    floor = [majority] * len(references)

    def f1(guess: Sequence[int]) -> float:
        return 100 * float(f1_score(references, guess, labels=labels, average="macro", zero_division=0))

    return {"accuracy": 100 * float(accuracy_score(references, predictions)), "macro_f1": f1(predictions),
            "majority_accuracy": 100 * float(accuracy_score(references, floor)), "majority_macro_f1": f1(floor)}
