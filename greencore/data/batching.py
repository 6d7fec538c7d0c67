"""From text to batches: prompts, token ids, padding and seeded batch orders.

Prompts (`PROMPTS`; "auto", the default of a run, is "chat" where the tokenizer has a chat template): with "tldr", the
paper's, a decoder-only model reads `{source} TL;DR: {target}<eos>` and is
trained on the target tokens only (the prompt is masked with -100); an encoder-decoder model reads `summarize: {source}`
and is trained on `{target}<eos>`. With "chat" a decoder-only model reads its tokenizer's chat template around
`Summarize in one sentence:\n\n{source}` as the user's turn, and answers `{target}<eos>` as the assistant.
Sources are truncated, never targets.

Classification rows (`encode_labelled`) are the text between the tokenizer's own special tokens, cut to fit, with
one class index as their label; `collate` gives them a `labels` tensor of shape (batch,).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import datasets
import torch

from .classification import load_classification
from .sources import load_summarization

if TYPE_CHECKING:  # only for annotations: importing transformers is slow
    from transformers import PreTrainedTokenizerBase

__all__ = ["IGNORE_INDEX", "PROMPTS", "batches", "collate", "encode_examples", "encode_labelled", "eos_token_id",
           "pad_batch", "pad_prompts", "pad_token_id", "prompt_for_generation", "resolve_prompt", "sample_batches",
           "sample_labelled_batches", "scored_targets"]

PROMPT_SEPARATOR = " TL;DR:"
ENCODER_PREFIX = "summarize:"
CHAT_INSTRUCTION = "Summarize in one sentence:\n\n"
PROMPTS = ("auto", "tldr", "chat")
IGNORE_INDEX = -100


def eos_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that ends a summary: the tokenizer's eos token, else its [SEP] token (BERT-style tokenizers)."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return token_id
    raise ValueError(f"{type(tokenizer).__name__} has neither an eos nor a sep token: set tokenizer.eos_token")


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id: the tokenizer's pad token, else its eos token (GPT-2-style tokenizers have no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id(tokenizer)


def _ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def _special_affixes(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a single text (e.g. [CLS] and [SEP], or none and </s>)."""
    bare = _ids(tokenizer, ["summary"])[0]
    full = tokenizer("summary")["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


@dataclass(frozen=True)
class _Template:
    """A prompt is head + prefix + source (cut to fit) + suffix + tail."""

    head: list[int]
    prefix: list[int]
    suffix: list[int]
    tail: list[int]

    @property
    def fixed(self) -> int:
        return len(self.head) + len(self.prefix) + len(self.suffix) + len(self.tail)


def resolve_prompt(tokenizer: PreTrainedTokenizerBase, is_encoder_decoder: bool, prompt: str) -> str:
    """The prompt a setting means: "auto" is "chat" for a decoder-only model whose tokenizer has a chat template,
    else "tldr" (bench/results/prompt.md: on smollm2 the chat template scored higher zero-shot and after training)."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt={prompt!r}: use one of {', '.join(PROMPTS)}")
    chat_ready = not is_encoder_decoder and bool(getattr(tokenizer, "chat_template", None))
    if prompt == "auto":
        return "chat" if chat_ready else "tldr"
    if prompt == "chat" and not chat_ready:
        raise ValueError("--prompt chat needs a decoder-only model whose tokenizer has a chat template "
                         "(smollm2 has one); use --prompt tldr")
    return prompt


def _template(tokenizer: PreTrainedTokenizerBase, is_encoder_decoder: bool, prompt: str) -> _Template:
    """Encoder-decoder: the tokenizer's own special tokens around `summarize: {source}`. Decoder-only "tldr": `{source}
    TL;DR:` with no special tokens except a leading bos when the tokenizer adds one by itself (OPT, Llama); "chat":
    the chat template's text before and after the user's message, which is the instruction and the source."""
    if resolve_prompt(tokenizer, is_encoder_decoder, prompt) == "chat":
        marker = "\x00"
        text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=True,
                                             tokenize=False)
        before, after = text.split(marker)
        return _Template([], _ids(tokenizer, [before + CHAT_INSTRUCTION])[0], _ids(tokenizer, [after])[0], [])
    head, tail = _special_affixes(tokenizer)
    if is_encoder_decoder:
        return _Template(head, _ids(tokenizer, [ENCODER_PREFIX])[0], [], tail)
    bos = head if tokenizer.bos_token_id is not None and head == [tokenizer.bos_token_id] else []
    return _Template(bos, [], _ids(tokenizer, [PROMPT_SEPARATOR])[0], [])


def _prompts(tokenizer: PreTrainedTokenizerBase, sources: Sequence[str], *, is_encoder_decoder: bool,
             max_source_tokens: int, prompt: str = "tldr") -> tuple[list[list[int]], int]:
    """Prompt ids for each source, each at most `max_source_tokens` long, and how many sources were cut to fit."""
    template = _template(tokenizer, is_encoder_decoder, prompt)
    budget = max_source_tokens - template.fixed
    if budget < 1:
        raise ValueError(f"max_source_tokens={max_source_tokens} leaves no room for the source: the prompt template "
                         f"alone takes {template.fixed} tokens, so use at least {template.fixed + 1}")
    prompts, n_truncated = [], 0
    for ids in _ids(tokenizer, sources):
        n_truncated += len(ids) > budget
        prompts.append(template.head + template.prefix + ids[:budget] + template.suffix + template.tail)
    return prompts, n_truncated


def encode_examples(tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset | Mapping[str, Sequence[str]], *,
                    is_encoder_decoder: bool, max_source_tokens: int, max_target_tokens: int, prompt: str = "tldr"
                    ) -> tuple[list[dict], int]:
    """Token ids for training: rows {"input_ids", "labels", "index"} and the number of sources that were truncated.

    The prompt (at most `max_source_tokens` ids) is cut inside the source text, never in the target. An example whose
    `{target}<eos>` is longer than `max_target_tokens` is dropped rather than cut, since training on a cut summary
    that ends in eos would teach the model to stop mid-sentence; `index` is each row's position in `dataset`, so
    `len(dataset) - len(rows)` examples were dropped. Decoder-only rows have labels aligned with input_ids (prompt
    masked with -100); encoder-decoder rows have the encoder input as input_ids and `{target}<eos>` as labels.
    """
    if max_target_tokens < 2:
        raise ValueError(f"max_target_tokens={max_target_tokens}: it must be at least 2 (one token and eos)")
    sources, targets = list(dataset["source"]), list(dataset["target"])
    prompt = resolve_prompt(tokenizer, is_encoder_decoder, prompt)
    prompts, n_truncated = _prompts(tokenizer, sources, is_encoder_decoder=is_encoder_decoder,
                                    max_source_tokens=max_source_tokens, prompt=prompt)
    eos = eos_token_id(tokenizer)
    # the summary continues "TL;DR:" after a space; an assistant's answer starts its turn
    spaced = not is_encoder_decoder and prompt == "tldr"
    target_ids = _ids(tokenizer, [" " + t for t in targets] if spaced else targets)
    rows = []
    for index, (prompt_ids, target) in enumerate(zip(prompts, target_ids)):
        answer = target + [eos]
        if len(answer) > max_target_tokens:
            continue
        if is_encoder_decoder:
            rows.append({"input_ids": prompt_ids, "labels": answer, "index": index})
        else:
            rows.append({"input_ids": prompt_ids + answer, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer,
                         "index": index})
    return rows, n_truncated


def encode_labelled(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], labels: Sequence[int], *,
                    max_tokens: int) -> tuple[list[dict], int]:
    """Token ids for classification: rows {"input_ids", "labels" (the class index), "index"} and how many texts were
    cut. Each text sits between the special tokens the tokenizer adds by itself ([CLS] ... [SEP], or a leading bos),
    cut inside the text so that the whole row has at most `max_tokens` ids; no row is dropped."""
    head, tail = _special_affixes(tokenizer)
    budget = max_tokens - len(head) - len(tail)
    if budget < 1:
        raise ValueError(f"max_source_tokens={max_tokens} leaves no room for the text beside the tokenizer's "
                         f"{len(head) + len(tail)} special tokens: use at least {len(head) + len(tail) + 1}")
    rows, n_truncated = [], 0
    for index, (ids, label) in enumerate(zip(_ids(tokenizer, texts), labels)):
        n_truncated += len(ids) > budget
        rows.append({"input_ids": head + ids[:budget] + tail, "labels": int(label), "index": index})
    return rows, n_truncated


def scored_targets(row: Mapping[str, Any], is_encoder_decoder: bool) -> int:
    """How many targets of a row the loss averages over: its label tokens (a decoder shifts its labels by one), or 1
    for a row with a class label. A batch's mean loss weighted by these is the mean over all its rows' targets."""
    labels = row["labels"]
    if isinstance(labels, int):
        return 1
    labels = labels if is_encoder_decoder else labels[1:]
    return sum(1 for x in labels if x != IGNORE_INDEX)


def prompt_for_generation(tokenizer: PreTrainedTokenizerBase, sources: Sequence[str], *, is_encoder_decoder: bool,
                          max_source_tokens: int, prompt: str = "tldr") -> list[list[int]]:
    """The prompt ids a model generates a summary from: exactly the prompt part of `encode_examples`' rows
    (decoder-only: `{source} TL;DR:` or the chat turn, which the summary continues; encoder-decoder: the encoder
    input)."""
    return _prompts(tokenizer, sources, is_encoder_decoder=is_encoder_decoder, max_source_tokens=max_source_tokens,
                    prompt=prompt)[0]


def pad_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]], *, is_encoder_decoder: bool
                ) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask for `model.generate`: decoder-only prompts are padded on the left, so every
    prompt ends where generation starts; encoder inputs are padded on the right."""
    if not prompts:
        raise ValueError("pad_prompts needs at least one prompt")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        start = 0 if is_encoder_decoder else width - len(prompt)
        input_ids[i, start:start + len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[i, start:start + len(prompt)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Mapping[str, Any]], *, pad_to: int | None = None
            ) -> dict[str, torch.Tensor]:
    """A training batch: input_ids (padded with the pad id), attention_mask and labels (padded with -100; for rows
    with a class label, a tensor of the batch's class indices).

    Padding is on the right, to the longest row, or to `pad_to` for every tensor (a fixed sequence length for
    profiling). input_ids and labels are padded independently, so decoder-only rows stay aligned and encoder-decoder
    rows keep their own label length (the model derives its decoder inputs from the labels). A classifier finds
    each row's last real token from the pad id, which is why padding is on the right there too.
    """
    if not rows:
        raise ValueError("collate needs at least one row")
    classes = isinstance(rows[0]["labels"], int)
    input_width = max(len(r["input_ids"]) for r in rows)
    label_width = 0 if classes else max(len(r["labels"]) for r in rows)
    if pad_to is not None:
        if max(input_width, label_width) > pad_to:
            raise ValueError(f"a row has {max(input_width, label_width)} tokens, more than pad_to={pad_to}: raise "
                             f"pad_to or lower max_source_tokens/max_target_tokens")
        input_width, label_width = pad_to, (0 if classes else pad_to)
    input_ids = torch.full((len(rows), input_width), pad_token_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), input_width), dtype=torch.long)
    labels = torch.full((len(rows), label_width), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        n_input = len(row["input_ids"])
        input_ids[i, :n_input] = torch.tensor(row["input_ids"], dtype=torch.long)
        attention_mask[i, :n_input] = 1
        if not classes:
            labels[i, :len(row["labels"])] = torch.tensor(row["labels"], dtype=torch.long)
    if classes:
        labels = torch.tensor([row["labels"] for row in rows], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_batch(tokenizer: PreTrainedTokenizerBase, batch: Mapping[str, torch.Tensor], multiple: int
              ) -> dict[str, torch.Tensor]:
    """A collated batch with every sequence width padded up to a multiple of `multiple` (pad id, mask 0, label -100;
    class labels, one per row, stay as they are).

    Fewer distinct shapes means fewer FLOPs measurements and profiles; padding changes no loss.
    """
    if multiple < 1:
        raise ValueError(f"multiple={multiple}: pad to a multiple of a positive number of tokens")
    fill = {"input_ids": pad_token_id(tokenizer), "attention_mask": 0, "labels": IGNORE_INDEX}
    return {key: torch.nn.functional.pad(t, (0, -t.shape[1] % multiple), value=fill.get(key, 0)) if t.dim() == 2
            else t for key, t in batch.items()}


def batches(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Mapping[str, Any]], *, batch_size: int, shuffle: bool,
            seed: int, pad_to: int | None = None, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches over `rows`, in a shuffled order that depends only on `seed` when `shuffle` is set."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: it must be a positive integer")
    order = list(range(len(rows)))
    if shuffle:
        random.Random(seed).shuffle(order)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield collate(tokenizer, [rows[i] for i in order[start:start + batch_size]], pad_to=pad_to)


def sample_batches(tokenizer: PreTrainedTokenizerBase, dataset: str = "stdlib-tldr", *, is_encoder_decoder: bool,
                   batch_size: int, seq_len: int, count: int = 1, seed: int = 0, max_target_tokens: int = 32,
                   prompt: str = "auto") -> list[dict[str, torch.Tensor]]:
    """`count` training batches of exactly `seq_len` tokens from a data set's train split, for profiling and probing.

    Every batch has the same shape, so a profile made on one describes them all. Sources are cut to fit `seq_len`
    (decoder-only: prompt plus summary; encoder-decoder: the encoder input, with summaries padded to `seq_len` too).
    `prompt` is resolved as a training run resolves it ("auto": the chat template where the tokenizer has one), so
    probes score tensors on the text a run trains on.
    """
    prompt = resolve_prompt(tokenizer, is_encoder_decoder, prompt)
    summary = 0 if is_encoder_decoder else max_target_tokens
    fixed = _template(tokenizer, is_encoder_decoder, prompt).fixed
    if seq_len <= summary + fixed:
        beside = f" beside {summary} summary tokens" if summary else ""
        other = ", or prompt='tldr'" if prompt == "chat" else ""
        raise ValueError(f"seq_len={seq_len} leaves no room for a source: the {prompt} prompt's template takes {fixed} "
                         f"tokens{beside}; use a seq_len of at least {summary + fixed + 1}{other}")
    if count < 1 or batch_size < 1:
        raise ValueError(f"count={count} and batch_size={batch_size} must be positive")
    data = load_summarization(dataset)["train"]
    needed = count * batch_size
    rows, _ = encode_examples(tokenizer, data.select(range(min(len(data), 4 * needed))),
                              is_encoder_decoder=is_encoder_decoder,
                              max_source_tokens=seq_len if is_encoder_decoder else seq_len - max_target_tokens,
                              max_target_tokens=min(max_target_tokens, seq_len), prompt=prompt)
    if len(rows) < needed:
        raise ValueError(f"{dataset} gives {len(rows)} usable examples, fewer than {count} batches of {batch_size}")
    return list(batches(tokenizer, rows, batch_size=batch_size, shuffle=True, seed=seed, pad_to=seq_len,
                        drop_last=True))[:count]


def sample_labelled_batches(tokenizer: PreTrainedTokenizerBase, dataset: str = "stdlib-topic", *, batch_size: int,
                            seq_len: int, count: int = 1, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """`count` classification batches of exactly `seq_len` tokens from a data set's train split (texts cut to fit,
    shorter rows padded), for profiling and probing a classifier as `sample_batches` does a language model."""
    if count < 1 or batch_size < 1:
        raise ValueError(f"count={count} and batch_size={batch_size} must be positive")
    data = load_classification(dataset)["train"]
    needed = count * batch_size
    if len(data) < needed:
        raise ValueError(f"{dataset} has {len(data)} training examples, fewer than {count} batches of {batch_size}")
    rows, _ = encode_labelled(tokenizer, list(data["text"]), list(data["label"]), max_tokens=seq_len)
    return list(batches(tokenizer, rows, batch_size=batch_size, shuffle=True, seed=seed, pad_to=seq_len,
                        drop_last=True))[:count]
