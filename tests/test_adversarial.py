"""Regression tests for what a hostile new user tried (issue 11): nothing of theirs is lost, nothing silently wrong."""

import json

import pytest
import torch

from greencore.cli import main
from greencore.records import RUN_MARKER
from greencore.training import Run, TrainConfig, train


def tiny(**kw) -> TrainConfig:
    base = dict(model="tiny-opt", scheme="full", max_steps=1, max_train_examples=16, max_eval_examples=4,
                batch_size=4, max_source_tokens=48, max_target_tokens=24, eval_rouge=False)
    return TrainConfig(**{**base, **kw})


def model_folder(path):
    """A folder that looks like a Hugging Face checkpoint: it holds a config.json, but no greencore run."""
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "pytorch_model.bin").write_bytes(b"weights")
    return path


def test_overwrite_never_deletes_a_folder_greencore_did_not_write(tmp_path, capsys):
    folder = model_folder(tmp_path / "m")
    argv = ["train", "--model", "tiny-opt", "--rho", "0.2", "--out", str(folder), "--overwrite"]
    assert main(argv) == 2
    assert "holds no greencore run" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
    with pytest.raises(ValueError, match="holds no greencore run"):
        Run(tiny(), folder, overwrite=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):  # no run files written among the user's own
        Run(tiny(), tmp_path / "notes")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]


def test_overwrite_replaces_a_run_only_once_the_new_one_is_set_up(tmp_path):
    train(tiny(), tmp_path / "run")
    assert (tmp_path / "run" / RUN_MARKER).is_file()
    before = json.loads((tmp_path / "run" / "summary.json").read_text())
    with pytest.raises(ValueError, match="feasible minimum"):  # fails in set-up: the old run must survive
        train(tiny(scheme="green:0.2"), tmp_path / "run", overwrite=True)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == before
    summary = train(tiny(scheme="layernorm"), tmp_path / "run", overwrite=True)
    assert summary["scheme"] == "layernorm" == json.loads((tmp_path / "run" / "config.json").read_text())["scheme"]


def test_a_failed_set_up_leaves_no_folder_behind(tmp_path):
    with pytest.raises(ValueError, match="feasible minimum"):
        train(tiny(scheme="green:0.2"), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_compare_refuses_the_same_scheme_twice(tmp_path, capsys):
    argv = ["compare", "--model", "tiny-opt", "--schemes", "green:0.6,full,green:0.6", "--out", str(tmp_path / "c")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "green:0.6 more than once" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_out_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, expected in [(afile, "is a file"), (afile / "below", "not a folder this user can write to")]:
        assert main(["train", "--model", "tiny-opt", "--scheme", "full", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_fails_at_once(capsys):
    from greencore.models import load_model

    with pytest.raises(ValueError, match="no CUDA device"):
        TrainConfig(device="cuda")
    with pytest.raises(ValueError, match="no CUDA device"):
        load_model("tiny-opt", device="cuda:0")
    assert main(["train", "--model", "tiny-opt", "--device", "cuda", "--out", "x"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_one_damaged_run_hides_no_other(tmp_path):
    """A truncated summary, an empty config or a garbage line in the middle: that run is listed as damaged, with
    the file named; a garbage *last* line (a write cut off by a kill) is skipped with a warning."""
    from greencore.records import list_runs, load_run
    from greencore_app import handlers

    for name in ("good", "summary", "config", "middle", "last"):
        train(tiny(), tmp_path / name)
    summary = tmp_path / "summary" / "summary.json"
    summary.write_text(summary.read_text()[:40])
    (tmp_path / "config" / "config.json").write_text("")
    metrics = tmp_path / "middle" / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    (tmp_path / "last" / "metrics.jsonl").open("a").write("{\"type\": \"tr\n")
    with pytest.warns(UserWarning, match="skipped its last line"):
        records = {r.path.name: r for r in list_runs(tmp_path)}
    assert records["good"].damaged is None and records["last"].damaged is None
    good = load_run(tmp_path / "good").metrics
    assert [(m["type"], m.get("loss")) for m in records["last"].metrics] == [(m["type"], m.get("loss")) for m in good]
    assert "summary.json is damaged" in records["summary"].damaged
    assert "config.json is damaged" in records["config"].damaged
    assert "metrics.jsonl line 2 is not JSON" in records["middle"].damaged
    with pytest.warns(UserWarning):
        message, table, figure = handlers.compare_runs(tmp_path)
    status = dict(zip(table["directory"], table["status"]))
    assert status["good"] == "finished" == status["last"]
    assert all(status[name].startswith("damaged: ") and name in status[name] for name in ("summary", "config", "middle"))
    assert "2 run(s) with a summary, 3 damaged" in message and figure is not None
