"""Regression tests for what a hostile new user tried (issue 11): nothing of theirs is lost, nothing silently wrong."""

import json

import pytest
import torch

from greencore.cli import main
from greencore.records import RUN_MARKER, checkpoints
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
    with pytest.raises(ValueError, match="trains no tensor"):  # fails in set-up: the old run must survive
        train(tiny(scheme="green:0.2"), tmp_path / "run", overwrite=True)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == before
    summary = train(tiny(scheme="layernorm"), tmp_path / "run", overwrite=True)
    assert summary["scheme"] == "layernorm" == json.loads((tmp_path / "run" / "config.json").read_text())["scheme"]


def test_a_failed_set_up_leaves_no_folder_behind(tmp_path):
    with pytest.raises(ValueError, match="trains no tensor"):
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


def test_the_smallest_rho_the_error_suggests_trains_a_tensor(tmp_path, capsys):
    """Item 2: `--rho 0.334` on tiny-opt used to train zero tensors and finish "finished"."""
    import re

    out = tmp_path / "r"
    argv = ["train", "--model", "tiny-opt", "--max-steps", "1", "--max-train-examples", "16", "--batch-size", "4",
            "--no-rouge", "--out", str(out)]
    assert main([*argv, "--rho", "0.334"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # the line after the progress bar
    assert err.startswith("greencore: error: rho=0.334 trains no tensor") and not out.exists()
    suggested = re.search(r"choose rho >= (\d\.\d{3})", err).group(1)
    assert main([*argv, "--rho", suggested]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["trainable_params"] > 0


def files_of(folder):
    """Every file under `folder` with its bytes: a snapshot to compare against."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def interrupted(tmp_path, name="cut", scheme="full"):
    """A run stopped after its first step of two (a step checkpoint, status "interrupted")."""
    run = Run(tiny(scheme=scheme, max_steps=2, max_train_examples=16), tmp_path / name)
    for event in run.events():
        if event["type"] == "train":
            run.stop("interrupted")
    assert run.summary["status"] == "interrupted"
    return tmp_path / name


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "done"
    train(tiny(eval_rouge=True, num_beams=1), out)
    before = files_of(out)
    assert main(["train", "--resume", str(out)]) == 0
    assert f"{out} finished at step 1: nothing to resume" in capsys.readouterr().err
    run = Run.resume(out)
    assert run.status == "finished" and list(run.events()) == [] and run.summary["steps"] == 1
    assert files_of(out) == before  # no duplicate eval rows, no new ROUGE, summary untouched


def test_resume_refuses_flags_that_conflict_with_the_recorded_run(tmp_path, capsys):
    out = interrupted(tmp_path)
    before = files_of(out)
    argv = ["train", "--resume", str(out), "--lr", "0.5", "--scheme", "green:0.5", "--model", "tiny-gpt2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conflict" in err
    for fragment in ("--lr 0.5 (the run has 0.0001)", "--model tiny-gpt2 (the run has tiny-opt)",
                     "--scheme green:0.5 (the run has full)"):
        assert fragment in err
    assert files_of(out) == before
    green = interrupted(tmp_path, "green", scheme="green:0.6")
    with pytest.raises(ValueError, match=r"--scheme green:0\.9 \(the run has green:0\.6\), --rho 0\.9 \(the run has 0\.6\)"):
        Run.resume(green, settings={"rho": 0.9})  # a bare --rho still changes the recorded scheme's budget
    # flags equal to what the run recorded are no conflict: the same command line with --resume continues the run
    assert main(["train", "--resume", str(out), "--model", "tiny-opt", "--scheme", "full", "--batch-size", "4"]) == 0
    assert f"resumed from {out / 'checkpoints' / 'step-1'} at step 1 of 2" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_resume_after_a_damaged_checkpoint_names_the_file_and_the_last_good_one(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(max_steps=None, max_train_examples=8, epochs=2, keep_checkpoints=3), out)
    good, newest = checkpoints(out)
    step = json.loads((good / "state.json").read_text())["global_step"]
    (out / "summary.json").unlink()  # as if killed before the end
    damages = {
        "model.safetensors is missing": lambda: (newest / "model.safetensors").unlink(),
        "model.safetensors is damaged": lambda: truncate(newest / "model.safetensors"),
        "state.json is damaged": lambda: (newest / "state.json").write_text("garbage"),
    }
    for problem, damage in damages.items():
        saved = files_of(newest)
        damage()
        assert main(["train", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"in checkpoint {newest}, {problem}" in err
        assert f"the last good checkpoint is {good} (step {step}): delete {newest} to resume from it" in err
        for name, data in saved.items():  # mend it for the next case
            (newest / name).write_bytes(data)
    truncate(good / "optimizer.safetensors")
    (newest / "state.json").write_text("")
    with pytest.raises(ValueError, match="no earlier checkpoint is intact: start the run again with --overwrite"):
        Run.resume(out)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_settings_are_refused_not_rounded_and_messages_name_the_flag():
    """Items 8 and 9: a message names the flag a CLI user typed (and the field a library user passed)."""
    for kwargs, expected in [({"batch_size": 2.5}, "--batch-size 2.5 (batch_size=) must be a whole number"),
                             ({"lr": None}, "--lr is empty (lr=None): give a number"),
                             ({"epochs": 0}, "--epochs 0 (epochs=) must be >= 1"),
                             ({"max_steps": True}, "--max-steps True (max_steps=) must be a whole number")]:
        with pytest.raises(ValueError) as err:
            tiny(**kwargs)
        assert expected in str(err.value)
    assert tiny(batch_size=4.0).batch_size == 4 and isinstance(tiny(batch_size=4.0).batch_size, int)


def test_too_long_summaries_are_named_as_the_cause_of_too_few_examples(tmp_path, capsys):
    argv = ["train", "--model", "tiny-opt", "--scheme", "full", "--max-target-tokens", "3", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "have a summary longer than --max-target-tokens 3" in err and "raise --max-target-tokens" in err
    with pytest.raises(SystemExit) as exit_:  # argparse's own exit, status 2
        main(["profile", "--model", "tiny-opt", "--batch-size", "0"])
    assert exit_.value.code == 2
    assert "argument --batch-size: 0 must be >= 1" in capsys.readouterr().err


def test_unknown_models_fail_at_once(monkeypatch):
    """Item 10: a misspelt built-in, or any uncached id under HF_HUB_OFFLINE, fails without the hub's retries."""
    import time

    from greencore.models import load_model

    started = time.perf_counter()
    with pytest.raises(ValueError, match="did you mean the built-in 'minilm'"):
        load_model("minlm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("gpt2", "some-org/some-model"):
        with pytest.raises(ValueError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE is set"):
            load_model(name)
    assert time.perf_counter() - started < 5  # the hub client's 5 retries took ~23 s
