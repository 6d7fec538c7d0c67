"""ROUGE by hand, and run records that are never half-written."""

import json

import pytest

from greencore.evaluate import rouge
from greencore.records import RunWriter, load_run, read_jsonl, write_json_atomic


def test_rouge_by_hand():
    same = rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same["rouge1"] == pytest.approx(100) and same["rougeL"] == pytest.approx(100)
    assert rouge(["dog"], ["cat"])["rouge1"] == 0
    # prediction "a b c d", reference "a b x y": unigram P = R = 2/4 -> F = 0.5; bigrams: 1 of 3 -> F = 1/3
    got = rouge(["alpha beta gamma delta"], ["alpha beta xray yankee"])
    assert got["rouge1"] == pytest.approx(50)
    assert got["rouge2"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError):
        rouge(["a"], [])


def test_jsonl_skips_a_line_still_being_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    assert read_jsonl(path) == [{"step": 1}]


def test_atomic_json_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_writer_and_loader_round_trip(tmp_path):
    writer = RunWriter(tmp_path / "run")
    writer.write_config({"scheme": "full"})
    for step in (1, 2, 3):
        writer.append("metrics", {"type": "train", "step": step, "loss": 1.0 / step})
    writer.append("selections", {"step": 2, "mask": [True]})
    writer.truncate_after(2)
    run = load_run(tmp_path / "run")
    assert [m["step"] for m in run.metrics] == [1, 2] and len(run.selections) == 1
    assert run.summary is None and run.label == "run"
    with pytest.raises(ValueError, match="not a greencore run"):
        load_run(tmp_path)
