"""Classification data: stdlib-topic, the offline set (labels, the names removed from the texts, module-disjoint
splits with every label in each, on a small synthetic library with known answers and on the running Python's), and
`load_classification` over local files and hub presets."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from greencore.data import load_classification, topics

WORDS = "reads the next chunk of input and returns it to the caller after checking its length and type carefully"


def _library(root: Path, packages: dict[str, int], docs_per_module: int = 3) -> None:
    """`packages`: name -> module count; each module has a module docstring and `docs_per_module - 1` functions,
    whose docstrings name the package, the module and the function."""
    for k, (package, modules) in enumerate(packages.items()):
        (root / package).mkdir(parents=True)
        topic = f"topic number {k} of {len(packages)}"  # tells the packages' texts apart once names are removed
        for i in range(modules):
            funcs = "\n".join(textwrap.dedent(f'''
                def helper{j}_{package}():
                    """Use {package}.mod{i}.helper{j}_{package} when it {WORDS}, {topic}, {j} {i}."""
                ''') for j in range(docs_per_module - 1))
            (root / package / f"mod{i}.py").write_text(
                f'"""The {package} module mod{i}: it {WORDS} in module {i}, {topic}."""\n{funcs}\n')
    (root / "loner.py").write_text(f'"""A module without a package: it {WORDS}."""\n')


def test_labels_splits_and_removed_names(tmp_path):
    sizes = {f"pkg{chr(97 + i)}": 5 + i for i in range(11)}  # 11 packages of 5-15 modules
    sizes["tiny"] = 3  # too few modules to spread over three splits
    _library(tmp_path, sizes)
    built = topics.build_stdlib_topic(tmp_path)
    labels = built["train"].features["label"].names
    largest = sorted(sizes, key=sizes.get, reverse=True)[:topics.LABELS_WANTED]
    assert labels == sorted(largest) and "tiny" not in labels  # pkga (5 modules) is the 11th largest
    modules = {split: set(built[split]["module"]) for split in built}
    assert not (modules["train"] & modules["validation"]) and not (modules["train"] & modules["test"])
    assert not (modules["validation"] & modules["test"])
    for split in built:
        assert set(built[split]["label"]) == set(range(len(labels))), split  # every label in every split
    total = sum(len(built[s]) for s in built)
    assert total == sum(3 * sizes[p] for p in largest)
    assert len(built["train"]) / total == pytest.approx(0.8, abs=0.1)
    for row in built["train"]:
        text = row["text"].lower()
        package, module = row["module"].split(".")
        assert package not in text and module not in text and "helper" not in text, row
        assert not any(label in text for label in labels)
        assert "reads the next chunk of input" in text
    assert topics.build_stdlib_topic(tmp_path)["test"]["text"] == built["test"]["text"]  # deterministic


def test_running_pythons_stdlib_topic(tmp_path):
    built = topics.load_stdlib_topic(tmp_path)
    labels = built["train"].features["label"].names
    assert 8 <= len(labels) <= 12
    for split in built:
        assert set(built[split]["label"]) == set(range(len(labels)))
        sample = built[split].select(range(min(200, len(built[split]))))
        assert not any(label in text.lower().split() for text in sample["text"] for label in labels)
    assert topics.topic_cache_path(tmp_path).is_dir()
    again = topics.load_stdlib_topic(tmp_path)  # read back from the cache
    assert again["validation"]["text"] == built["validation"]["text"]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_file_with_string_labels_and_a_split_column(tmp_path):
    rows = [{"review": f"text {i}", "sentiment": "good" if i % 3 else "bad", "split": "train"} for i in range(12)]
    rows += [{"review": "held out", "sentiment": "bad", "split": "test"},
             {"review": "checked", "sentiment": "good", "split": "dev"}]
    data = load_classification(str(_jsonl(tmp_path / "d.jsonl", rows)), text_field="review", label_field="sentiment")
    assert data["train"].features["label"].names == ["bad", "good"]
    assert data["train"]["text"][:2] == ["text 0", "text 1"] and data["train"]["label"][:2] == [0, 1]
    assert data["test"]["label"] == [0] and data["validation"]["text"] == ["checked"]


def test_local_file_with_integer_labels_split_80_10_10(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{i % 4}\n" for i in range(40)))
    data = load_classification(str(path))
    assert [len(data[s]) for s in ("train", "validation", "test")] == [32, 4, 4]
    assert data["train"].features["label"].names == ["0", "1", "2", "3"]  # csv gives strings, sorted
    texts = [t for split in ("train", "validation", "test") for t in data[split]["text"]]
    assert sorted(texts) == sorted(f"row {i}" for i in range(40))
    ints = _jsonl(tmp_path / "i.jsonl", [{"text": f"t{i}", "label": 10 - i % 2, "split": "train"} for i in range(4)]
                  + [{"text": "v", "label": 9, "split": "validation"}])
    assert load_classification(str(ints))["train"].features["label"].names == ["9", "10"]  # integers in order


@pytest.mark.parametrize("rows, fields, match", [
    ([{"text": "a", "label": "x", "split": "train"}, {"text": "b", "label": "y", "split": "test"}], {},
     "label 'y', which no training row has"),
    ([{"text": "a", "label": "x"}], {"label_field": "class"}, "no field 'class'.*--label-field"),
    ([{"text": "", "label": "x"}], {}, "non-empty text"),
    ([{"text": "a", "label": 1.5}], {}, "a string or an integer"),
])
def test_bad_local_files_fail_clearly(tmp_path, rows, fields, match):
    with pytest.raises(ValueError, match=match):
        load_classification(str(_jsonl(tmp_path / "d.jsonl", rows)), **fields)


def test_unknown_names_and_offline_hub_presets_fail_clearly(monkeypatch):
    with pytest.raises(ValueError, match="unknown classification data set 'imdb'"):
        load_classification("imdb")
    with pytest.raises(ValueError, match="only apply to local files"):
        load_classification("stdlib-topic", text_field="body")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not load 'sst2'.*offline, use 'stdlib-topic'"):
        load_classification("sst2", cache_dir="/nonexistent-cache")
