"""Evaluation: teacher-forced validation loss, and ROUGE of generated summaries (with `rouge-score`, offline)."""

from __future__ import annotations

from itertools import groupby
from typing import Sequence

import torch
from rouge_score import rouge_scorer

from .data import IGNORE_INDEX, batches, eos_token_id, pad_prompts, pad_token_id, prompt_for_generation
from .flops import model_loss

__all__ = ["generate_summaries", "rouge", "validation_loss"]

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@torch.no_grad()
def validation_loss(model: torch.nn.Module, tokenizer, rows: Sequence[dict], *, batch_size: int) -> float:
    """Mean per-token loss over `rows` (from `encode_examples`), weighting each batch by its label tokens."""
    if not rows:
        raise ValueError("no validation rows to evaluate")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for batch in batches(tokenizer, rows, batch_size=batch_size, shuffle=False, seed=0):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch["labels"] if model.config.is_encoder_decoder else batch["labels"][:, 1:]
            n = int((labels != IGNORE_INDEX).sum())
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
