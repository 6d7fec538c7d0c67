"""Where classification data comes from: the offline `stdlib-topic`, hub presets, and local .jsonl/.json/.csv files.

Every data set is a `datasets.DatasetDict` with splits train/validation/test, a string column `text` and a
`ClassLabel` column `label` whose names are the classes (the training split's, for a local file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import datasets

from .sources import _LOCAL_SEED, _LOCAL_SUFFIXES, _limit, local_splits, read_local
from .stdlib import SPLITS
from .topics import load_stdlib_topic

__all__ = ["CLASSIFICATION_DATASETS", "load_classification"]

CLASSIFICATION_DATASETS: dict[str, str] = {
    "stdlib-topic": "offline default: a standard-library docstring (its names removed) -> its package, built locally",
    "sst2": "stanfordnlp/sst2: a film-review sentence -> negative/positive (needs the Hugging Face Hub)",
    "ag_news": "fancyzhx/ag_news: a news article -> World/Sports/Business/Sci/Tech (needs the Hugging Face Hub)",
}
# hub id, text column, and how its splits map to ours: SST-2's test labels are hidden, so its validation split is the
# test split and a tenth of train the validation split; AG News has no validation split, so a tenth of train is it
_HUB = {"sst2": ("stanfordnlp/sst2", "sentence", {"test": "validation"}),
        "ag_news": ("fancyzhx/ag_news", "text", {"test": "test"})}


def _load_hub(name: str, cache_dir: str | None) -> datasets.DatasetDict:
    repo, text, taken = _HUB[name]
    try:
        raw = datasets.load_dataset(repo, cache_dir=cache_dir)
    except Exception as error:  # offline, missing repo, hub errors: all mean the same thing to the user
        raise ValueError(f"could not load {name!r} ({repo}) from the Hugging Face Hub: {error}. It needs network "
                         f"access or a copy in the datasets cache; offline, use 'stdlib-topic' or a local "
                         f".jsonl/.csv file") from error
    held = raw["train"].train_test_split(test_size=0.1, seed=_LOCAL_SEED)
    splits = {"train": held["train"], "validation": held["test"], "test": raw[taken["test"]]}
    return datasets.DatasetDict({split: data.rename_column(text, "text").select_columns(["text", "label"])
                                 for split, data in splits.items()})


def _load_local(path: Path, text_field: str, label_field: str) -> datasets.DatasetDict:
    """A local file: its `split` column or 80/10/10; the classes are the training split's labels (strings, or
    integers, sorted), and a label only validation or test has is a clear error."""
    records = read_local(path, {"text_field": text_field, "label_field": label_field}, "labelled text")
    rows: list[tuple[str, Any]] = []
    for number, record in enumerate(records, 1):
        text, label = record.get(text_field), record.get(label_field)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"row {number} of {path} needs non-empty text in {text_field!r}, got {text!r}")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or (isinstance(label, str) and not label.strip()):
            raise ValueError(f"row {number} of {path} needs a label (a string or an integer) in {label_field!r}, "
                             f"got {label!r}")
        rows.append((text, label.strip() if isinstance(label, str) else label))
    order, assigned = local_splits(path, records)
    rows = [rows[i] for i in order]
    classes = sorted({label for (_, label), split in zip(rows, assigned) if split == "train"},
                     key=lambda v: (isinstance(v, str), v))
    for (_, label), split, number in zip(rows, assigned, order):
        if label not in classes:
            raise ValueError(f"row {number + 1} of {path} ({split}) has label {label!r}, which no training row has; "
                             f"the training labels are {classes}: add training rows of that class or remove the row")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=[str(c) for c in classes])})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"text": [t for (t, _), a in zip(rows, assigned) if a == split],
             "label": [classes.index(lab) for (_, lab), a in zip(rows, assigned) if a == split]}, features=features)
        for split in SPLITS})


def load_classification(name: str = "stdlib-topic", *, text_field: str | None = None, label_field: str | None = None,
                        max_examples: Mapping[str, int] | int | None = None, cache_dir: str | None = None
                        ) -> datasets.DatasetDict:
    """Load a classification data set as a DatasetDict with train/validation/test, `text` and a `ClassLabel` `label`.

    `name` is a key of `CLASSIFICATION_DATASETS` or the path of a .jsonl/.json/.csv file (columns `text_field` and
    `label_field`, default "text"/"label"). `max_examples` keeps the first rows of every split (an int) or of the
    named splits (a dict). `cache_dir` is where stdlib-topic is cached, or the hub data sets' datasets cache.
    """
    if name.lower().endswith(_LOCAL_SUFFIXES):
        data = _load_local(Path(name).expanduser(), text_field or "text", label_field or "label")
    elif name in CLASSIFICATION_DATASETS:
        if text_field is not None or label_field is not None:
            raise ValueError(f"--text-field/--label-field (text_field/label_field) only apply to local files; "
                             f"{name!r} has fixed columns")
        data = load_stdlib_topic(cache_dir) if name == "stdlib-topic" else _load_hub(name, cache_dir)
        data = datasets.DatasetDict({split: data[split].select_columns(["text", "label"]) for split in SPLITS})
    else:
        raise ValueError(f"unknown classification data set {name!r}: use one of {sorted(CLASSIFICATION_DATASETS)}, "
                         f"or the path of a .jsonl, .json or .csv file with text/label columns")
    return data if max_examples is None else _limit(data, max_examples)
