"""Tasks: what a run teaches the model, one registered class each, carrying everything that differs between them.

`summarization` (the paper's): a causal or seq2seq LM learns `source -> summary`, trained on the summary's tokens and
scored by ROUGE of generated summaries. `classification`: the model's body under a new sequence-classification head
(`AutoModelForSequenceClassification`; a decoder pools its last real token), cross-entropy over the labels, scored by
accuracy and macro-F1 beside the majority class's. A task owns its data sets, how the model is loaded for them, how
examples become token rows, and the final evaluation; profiling, importance, selection, the training step and the
FLOPs accounting are the same code for every task. To add one, subclass `Task` here and decorate it with `@register`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

if TYPE_CHECKING:  # annotations only: this module stays importable without torch
    import datasets
    import torch

    from .training.config import TrainConfig

__all__ = ["TASKS", "Task", "get_task", "register", "task_of"]

TASKS: dict[str, type["Task"]] = {}
"""Every registered task by name, in registration order (the order the CLI and the app list them in)."""

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv")


def register(cls: type["Task"]) -> type["Task"]:
    """Class decorator: make a `Task` subclass available by its `name`."""
    TASKS[cls.name] = cls
    return cls


def task_of(summary: Any) -> "Task":
    """The task of a recorded run (`summary.json` or `config.json`); runs recorded before tasks existed summarised."""
    return get_task(summary.get("task") or "summarization")


def get_task(name: str) -> "Task":
    """The task called `name`, or a ValueError listing the tasks there are."""
    cls = TASKS.get(name)
    if cls is None:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return cls()


@dataclass(frozen=True)
class Task:
    """A task; subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    default_dataset: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # the summary's keys of the final evaluation (the test split's)
    headline: ClassVar[str]  # the one metric tables and plots rank runs by
    columns: ClassVar[tuple[tuple[str, str], ...]]  # (display name, summary key) of the scores tables show
    fields: ClassVar[tuple[str, str]]  # the TrainConfig fields naming a local file's columns
    new_head: ClassVar[bool] = False  # the model gets a new head (num_labels) instead of keeping its LM head

    def datasets(self) -> dict[str, str]:
        """The named data sets of this task with a line each (local files are always accepted too)."""
        raise NotImplementedError

    def check(self, config: "TrainConfig") -> None:
        """Refuse a data set this task cannot read, or another task's column fields, before anything is loaded."""
        from .training.config import flag

        for other in TASKS.values():
            for field in set(other.fields) - set(self.fields):
                if getattr(config, field) is not None:
                    raise ValueError(f"{flag(field)} is for --task {other.name}; this run's task is {self.name}: "
                                     f"use {' and '.join(flag(f) for f in self.fields)}")
        self.check_dataset(config.dataset)

    def check_dataset(self, name: str) -> None:
        """Refuse a data set name this task cannot read (a named one of another task, say), naming the right task."""
        known = self.datasets()
        if name not in known and not name.lower().endswith(LOCAL_SUFFIXES):
            other = [t for t, cls in TASKS.items() if t != self.name and name in cls().datasets()]
            hint = f"; {name!r} is a {other[0]} data set: pass --task {other[0]}" if other else ""
            raise ValueError(f"--dataset {name!r} is not a {self.name} data set: use one of {', '.join(known)}, or a "
                             f".jsonl, .json or .csv file{hint}")

    def load(self, name: str, *, columns: tuple[str | None, str | None] = (None, None),
             max_examples: dict[str, int] | None = None) -> "datasets.DatasetDict":
        """Data set `name` as train/validation/test (`columns`: a local file's two column names, see `fields`)."""
        raise NotImplementedError

    def load_splits(self, config: "TrainConfig") -> "datasets.DatasetDict":
        """The run's train/validation/test splits, cut to the config's example limits."""
        return self.load(config.dataset, columns=tuple(getattr(config, f) for f in self.fields),
                         max_examples=_limits(config))

    def sample(self, tokenizer: Any, dataset: str, *, is_encoder_decoder: bool, batch_size: int, seq_len: int,
               count: int, seed: int, prompt: str) -> list[dict]:
        """`count` training batches of exactly `seq_len` tokens from the data set's train split (for profiling and
        probing outside a run: Explore, `greencore profile`)."""
        raise NotImplementedError

    def num_labels(self, splits: "datasets.DatasetDict") -> int | None:
        """The classes the model's head needs (None: the model keeps its language-model head)."""
        return None

    def num_labels_of(self, name: str) -> int | None:
        """`num_labels` of data set `name`, loading it only when the task gives the model a new head."""
        return self.num_labels(self.load(name)) if self.new_head else None

    def longest(self, config: "TrainConfig", is_encoder_decoder: bool) -> int:
        """The most tokens a training row can have (for the batch-size check against the device's memory)."""
        raise NotImplementedError

    def prompt(self, tokenizer: Any, is_encoder_decoder: bool, config: "TrainConfig") -> str | None:
        """The prompt a run uses (the config's resolved), or None where the task has none."""
        return None

    def encode(self, tokenizer: Any, split: "datasets.Dataset", config: "TrainConfig", *, is_encoder_decoder: bool,
               prompt: str | None) -> tuple[list[dict], int]:
        """Token rows of one split for training and validation loss, and how many inputs were cut to fit."""
        raise NotImplementedError

    def inputs(self, split: "datasets.Dataset") -> list:
        """What the final evaluation predicts from, one item per example (split across ranks)."""
        raise NotImplementedError

    def predict(self, model: "torch.nn.Module", tokenizer: Any, inputs: Sequence, config: "TrainConfig",
                prompt: str | None) -> list:
        """The model's predictions for `inputs`."""
        raise NotImplementedError

    def score(self, predictions: Sequence, split: "datasets.Dataset", train: "datasets.Dataset") -> dict[str, float]:
        """The final evaluation's metrics of one split (keys of `metrics`)."""
        raise NotImplementedError

    def examples(self, predictions: Sequence, split: "datasets.Dataset", count: int = 5) -> list[dict[str, str]]:
        """The first predictions beside their references, as text, for the run record."""
        raise NotImplementedError

    def evaluates(self, config: "TrainConfig") -> bool:
        """Whether the run ends with the final evaluation."""
        return True


@register
class Summarization(Task):
    name = "summarization"
    description = "source -> summary: the LM head trained on the summary tokens, ROUGE of generated summaries"
    default_dataset = "stdlib-tldr"
    metrics = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    headline = "rougeL"
    columns = (("ROUGE-1", "rouge1"), ("ROUGE-2", "rouge2"), ("ROUGE-L", "rougeL"))
    fields = ("source_field", "target_field")

    def datasets(self):
        from .data import DATASETS

        return DATASETS

    def load(self, name, *, columns=(None, None), max_examples=None):
        from .data import load_summarization

        return load_summarization(name, source_field=columns[0], target_field=columns[1], max_examples=max_examples)

    def sample(self, tokenizer, dataset, *, is_encoder_decoder, batch_size, seq_len, count, seed, prompt):
        from .data import sample_batches

        return sample_batches(tokenizer, dataset, is_encoder_decoder=is_encoder_decoder, batch_size=batch_size,
                              seq_len=seq_len, count=count, seed=seed, prompt=prompt)

    def longest(self, config, is_encoder_decoder):
        if is_encoder_decoder:
            return max(config.max_source_tokens, config.max_target_tokens)
        return config.max_source_tokens + config.max_target_tokens

    def prompt(self, tokenizer, is_encoder_decoder, config):
        from .data import resolve_prompt

        return resolve_prompt(tokenizer, is_encoder_decoder, config.prompt)

    def encode(self, tokenizer, split, config, *, is_encoder_decoder, prompt):
        from .data import encode_examples

        return encode_examples(tokenizer, split, is_encoder_decoder=is_encoder_decoder,
                               max_source_tokens=config.max_source_tokens, max_target_tokens=config.max_target_tokens,
                               prompt=prompt)

    def inputs(self, split):
        return list(split["source"])

    def predict(self, model, tokenizer, inputs, config, prompt):
        from .evaluate import generate_summaries

        return generate_summaries(model, tokenizer, inputs, max_source_tokens=config.max_source_tokens,
                                  max_new_tokens=config.max_target_tokens, num_beams=config.num_beams, prompt=prompt)

    def score(self, predictions, split, train):
        from .evaluate import rouge

        return rouge(predictions, list(split["target"]))

    def examples(self, predictions, split, count=5):
        return [{"prediction": p, "reference": r} for p, r in zip(predictions[:count], list(split["target"])[:count])]

    def evaluates(self, config):
        return config.eval_rouge


@register
class Classification(Task):
    name = "classification"
    description = "text -> class: a new sequence-classification head, accuracy and macro-F1 (majority class beside)"
    default_dataset = "stdlib-topic"
    metrics = ("accuracy", "macro_f1", "majority_accuracy", "majority_macro_f1")
    headline = "accuracy"
    columns = (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("majority accuracy", "majority_accuracy"),
               ("majority macro-F1", "majority_macro_f1"))
    fields = ("text_field", "label_field")
    new_head = True

    def datasets(self):
        from .data import CLASSIFICATION_DATASETS

        return CLASSIFICATION_DATASETS

    def load(self, name, *, columns=(None, None), max_examples=None):
        from .data import load_classification

        return load_classification(name, text_field=columns[0], label_field=columns[1], max_examples=max_examples)

    def sample(self, tokenizer, dataset, *, is_encoder_decoder, batch_size, seq_len, count, seed, prompt):
        from .data import sample_labelled_batches

        return sample_labelled_batches(tokenizer, dataset, batch_size=batch_size, seq_len=seq_len, count=count,
                                       seed=seed)

    def num_labels(self, splits):
        return splits["train"].features["label"].num_classes

    def longest(self, config, is_encoder_decoder):
        return config.max_source_tokens

    def encode(self, tokenizer, split, config, *, is_encoder_decoder, prompt):
        from .data import encode_labelled

        return encode_labelled(tokenizer, list(split["text"]), list(split["label"]),
                               max_tokens=config.max_source_tokens)

    def inputs(self, split):
        return list(split["text"])

    def predict(self, model, tokenizer, inputs, config, prompt):
        from .evaluate import predict_classes

        return predict_classes(model, tokenizer, inputs, max_tokens=config.max_source_tokens,
                               batch_size=config.batch_size)

    def score(self, predictions, split, train):
        from .evaluate import classification_scores

        majority = Counter(train["label"]).most_common(1)[0][0]  # ties: the class seen first
        return classification_scores(predictions, list(split["label"]), majority=majority,
                                     num_labels=train.features["label"].num_classes)

    def examples(self, predictions, split, count=5):
        names = split.features["label"].names
        return [{"prediction": names[p], "reference": names[r], "text": t[:300]}
                for p, r, t in zip(predictions[:count], list(split["label"])[:count], list(split["text"])[:count])]


def _limits(config: "TrainConfig") -> dict[str, int]:
    limits = {"train": config.max_train_examples, "validation": config.max_eval_examples,
              "test": config.max_eval_examples}
    return {k: v for k, v in limits.items() if v is not None}
