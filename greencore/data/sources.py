"""Where summarisation data comes from: the offline `stdlib-tldr`, hub presets, and local .jsonl/.json/.csv files.

Every data set is a `datasets.DatasetDict` with splits train/validation/test and string columns `source` and `target`.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Mapping

import datasets

from .stdlib import FEATURES, SPLITS, load_stdlib_tldr

__all__ = ["DATASETS", "load_summarization"]

DATASETS: dict[str, str] = {
    "stdlib-tldr": "offline default: Python standard-library docstrings (body -> one-line summary), built locally",
    "scitldr": "allenai/scitldr, config Abstract: paper abstract -> one-sentence TL;DR (needs the Hugging Face Hub)",
    "dialogsum": "knkarthick/dialogsum: dialogue -> summary (needs the Hugging Face Hub)",
}
_HUB = {"scitldr": ("allenai/scitldr", "Abstract"), "dialogsum": ("knkarthick/dialogsum", None)}
_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
                  "dev": "validation", "test": "test"}
_LOCAL_SEED = 0


def _scitldr_row(example: dict) -> dict:
    """One row per abstract: its sentences joined, and its first (author-written) TL;DR."""
    return {"source": " ".join(example["source"]), "target": example["target"][0]}


def _dialogsum_row(example: dict) -> dict:
    return {"source": example["dialogue"], "target": example["summary"]}


_HUB_ROWS = {"scitldr": _scitldr_row, "dialogsum": _dialogsum_row}


def _load_hub(name: str, cache_dir: str | None) -> datasets.DatasetDict:
    """A hub preset converted to source/target columns; any failure to fetch it becomes a ValueError saying why."""
    repo, config = _HUB[name]
    try:
        raw = datasets.load_dataset(repo, config, cache_dir=cache_dir)
    except Exception as error:  # offline, missing repo, hub errors: all mean the same thing to the user
        raise ValueError(f"could not load {name!r} ({repo}) from the Hugging Face Hub: {error}. It needs network "
                         f"access or a copy in the datasets cache; offline, use 'stdlib-tldr' or a local "
                         f".jsonl/.csv file") from error
    convert = _HUB_ROWS[name]
    return datasets.DatasetDict({
        split: raw[split].map(convert, remove_columns=raw[split].column_names, features=FEATURES) for split in SPLITS})


def _read_records(path: Path) -> list[dict]:
    """The rows of a .csv, .jsonl or .json file (a JSON list of objects, or JSON lines) as dicts."""
    try:
        return _parse_records(path)
    except (UnicodeDecodeError, csv.Error, OSError) as error:
        raise ValueError(f"could not read data set {str(path)!r} ({type(error).__name__}: {error}); it must be a "
                         f"readable UTF-8 .jsonl, .json or .csv file") from error


def _parse_records(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {number} is not valid JSON ({error}): write one JSON object "
                                     f"per line") from error
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path} must hold JSON objects (one per row), e.g. {{\"source\": ..., \"target\": ...}}")
    return records


def _load_local(path: Path, source_field: str, target_field: str) -> datasets.DatasetDict:
    """A local file as train/validation/test: by its `split` column if it has one, else 80/10/10 by a seeded shuffle."""
    records = read_local(path, {"source_field": source_field, "target_field": target_field},
                         "(source, target) pair")
    pairs = []
    for number, record in enumerate(records, 1):
        values = (record.get(source_field), record.get(target_field))
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise ValueError(f"row {number} of {path} needs non-empty text in {source_field!r} and {target_field!r}, "
                             f"got {values!r}: fix or remove that row")
        pairs.append(values)
    order, assigned = local_splits(path, records)
    pairs = [pairs[i] for i in order]
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"source": [s for (s, _), a in zip(pairs, assigned) if a == split],
             "target": [t for (_, t), a in zip(pairs, assigned) if a == split]}, features=FEATURES)
        for split in SPLITS})


def read_local(path: Path, fields: Mapping[str, str], row: str) -> list[dict]:
    """The rows of a local data file, which must exist, hold at least one `row` and have every column of `fields`
    (setting name -> column name, as in `{"source_field": "source"}`)."""
    if not path.is_file():
        raise ValueError(f"file {path} does not exist: pass the path of a .jsonl, .json or .csv file")
    records = _read_records(path)
    if not records:
        raise ValueError(f"{path} holds no rows: a data set needs at least one {row}")
    available = sorted({key for record in records for key in record})
    for role, field in fields.items():
        if field not in available:
            raise ValueError(f"{path} has no field {field!r}; its fields are {available}: name one with "
                             f"--{role.replace('_', '-')} ({role}= in Python)")
    return records


def local_splits(path: Path, records: list[dict]) -> tuple[list[int], list[str]]:
    """How a local file's rows are split: (the order to take them in, the split of each row in that order). By the
    file's `split` column where it has one (in file order), else 80/10/10 after a seeded shuffle."""
    if any("split" in record for record in records):
        assigned = []
        for number, record in enumerate(records, 1):
            split = _SPLIT_ALIASES.get(str(record.get("split", "")).strip().lower())
            if split is None:
                raise ValueError(f"row {number} of {path} has split {record.get('split')!r}: use train, validation "
                                 f"or test (or remove the split column to split 80/10/10 automatically)")
            assigned.append(split)
        return list(range(len(records))), assigned
    order = list(range(len(records)))
    random.Random(_LOCAL_SEED).shuffle(order)
    n_held = len(records) // 10
    return order, ["train"] * (len(records) - 2 * n_held) + ["validation"] * n_held + ["test"] * n_held


def _limit(data: datasets.DatasetDict, max_examples: Mapping[str, int] | int) -> datasets.DatasetDict:
    limits = {split: max_examples for split in data} if isinstance(max_examples, int) else dict(max_examples)
    unknown = sorted(set(limits) - set(data))
    if unknown:
        raise ValueError(f"max_examples names unknown splits {unknown}: use {list(data)}")
    for split, limit in limits.items():
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"max_examples[{split!r}] = {limit!r}: it must be a non-negative integer")
        data[split] = data[split].select(range(min(limit, len(data[split]))))
    return data


def load_summarization(name: str = "stdlib-tldr", *, source_field: str | None = None, target_field: str | None = None,
                       max_examples: Mapping[str, int] | int | None = None, cache_dir: str | None = None
                       ) -> datasets.DatasetDict:
    """Load a summarisation data set as a DatasetDict with train/validation/test and `source`/`target` columns.

    `name` is a key of `DATASETS` or the path of a .jsonl/.json/.csv file (whose text columns `source_field` and
    `target_field` name, default "source"/"target"). `max_examples` keeps the first rows of every split (an int) or
    of the named splits (a dict). `cache_dir` is where stdlib-tldr is cached, or the hub data sets' datasets cache.
    """
    if name.lower().endswith(_LOCAL_SUFFIXES):
        data = _load_local(Path(name).expanduser(), source_field or "source", target_field or "target")
    elif name in DATASETS:
        if source_field is not None or target_field is not None:
            raise ValueError(f"--source-field/--target-field (source_field/target_field) only apply to local files; "
                             f"{name!r} has fixed columns")
        data = load_stdlib_tldr(cache_dir) if name == "stdlib-tldr" else _load_hub(name, cache_dir)
    else:
        raise ValueError(f"unknown data set {name!r}: use one of {sorted(DATASETS)}, or the path of a .jsonl, .json "
                         f"or .csv file with source/target columns")
    return data if max_examples is None else _limit(data, max_examples)

