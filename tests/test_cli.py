"""The `greencore` command: outputs checked against the library, and one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from greencore.cli import main
from greencore.data import sample_batches
from greencore.models import load_model
from greencore.profile import profile_model
from greencore.select import round_rho_up


def test_profile_json_matches_the_library(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "--model", "tiny-gpt2", "--batch-size", "2", "--seq-len", "64", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    model, tokenizer = load_model("tiny-gpt2")
    model.train()
    batch = sample_batches(tokenizer, is_encoder_decoder=False, batch_size=2, seq_len=64)[0]
    expected = profile_model(model, batch)
    assert data["names"] == expected.names
    assert data["t_fp"] == expected.t_fp
    np.testing.assert_array_equal(data["t_dw"], expected.t_dw)
    assert f"smallest rho that trains a tensor {round_rho_up(expected.min_training_rho):.3f}" in printed and expected.names[0] in printed


def test_select_reports_predicted_and_measured_ratio(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["select", "--model", "tiny-opt", "--rho", "0.6", "--batch-size", "2", "--seq-len", "64",
                 "--probe-batches", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["predicted_ratio"] <= 0.6 + 1e-9
    assert data["measured_ratio"] == pytest.approx(data["predicted_ratio"], rel=0.02)
    assert set(data["trainable"]) <= set(data["names"])
    assert "measured" in capsys.readouterr().out


def test_config_only_profile_and_select(tmp_path, capsys):
    from greencore.meta import load_config, meta_batch, meta_model

    out = tmp_path / "p.json"
    assert main(["profile", "--config-only", "--model", "tiny-llama", "--batch-size", "2", "--seq-len", "48",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    model = meta_model(load_config("tiny-llama"))
    expected = profile_model(model, meta_batch(model, 2, 48))
    assert data["config_only"] is True and data["names"] == expected.names and data["t_fp"] == expected.t_fp
    np.testing.assert_array_equal(data["t_dy"], expected.t_dy)
    out = tmp_path / "s.json"
    assert main(["select", "--config-only", "--model", "tiny-llama", "--rho", "0.6", "--batch-size", "2",
                 "--seq-len", "48", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["metric"] == "uniform" and data["importance"] == [1.0] * len(expected)
    assert data["measured_ratio"] == pytest.approx(data["predicted_ratio"], rel=1e-12)
    assert "not the selection GreenTrainer would learn" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragment", [
    (["select", "--config-only", "--model", "tiny-gpt2", "--rho", "0.5", "--metric", "fisher"], "needs the model's weights"),
    (["profile", "--model", "llama-3-8b"], "architecture without weights"),
    (["select", "--model", "tiny-gpt2", "--rho", "0.1", "--seq-len", "64", "--probe-batches", "1"], "trains no tensor"),
    (["select", "--model", "tiny-gpt2", "--rho", "1.5"], "must be in (0, 1]"),
    (["select", "--rho", "x"], "invalid float"),
    (["profile", "--model", "no-such-model-xyz"], "built-in"),
    (["train", "--model", "tiny-gpt2", "--scheme", "magic", "--out", "x"], "unknown scheme"),
    (["train", "--model", "tiny-gpt2"], "--out"),
    (["train", "--resume", "/nonexistent/run"], "cannot resume"),
    (["compare", "--model", "tiny-gpt2", "--schemes", " , "], "--out"),
])
def test_bad_arguments_exit_2_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and err.startswith("greencore: error:")


def test_compare_writes_a_table_of_every_scheme(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", "tiny-gpt2", "--schemes", "full,green:0.5", "--max-steps", "2",
            "--max-train-examples", "24", "--max-eval-examples", "4", "--batch-size", "4", "--max-source-tokens",
            "48", "--no-rouge", "--out", str(out)]
    assert main(argv) == 0
    data = json.loads((out / "comparison.json").read_text())
    assert [s["label"] for s in data["summaries"]] == ["full", "green:0.5"]
    assert data["summaries"][0]["flops_ratio"] == 1.0
    assert data["summaries"][1]["flops_ratio_training"] <= 0.5 + 0.03
    table = (out / "comparison.md").read_text()
    assert table.count("\n") == 4 and "green:0.5" in table
    with pytest.raises(SystemExit) as exc:  # the same folders again: refused, nothing lost
        raise SystemExit(main(argv))
    assert exc.value.code == 2 and "already holds a run" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "greencore.cli", "select", "--rho", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_profile_of_a_classifier_and_its_bad_flags(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["profile", "--model", "tiny-llama", "--task", "classification", "--batch-size", "2", "--seq-len", "32",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["names"][0] == "score.weight"  # the new head, nearest the loss
    assert main(["profile", "--config-only", "--model", "tiny-llama", "--task", "classification"]) == 2
    assert "--config-only profiles a language model" in capsys.readouterr().err
    assert main(["train", "--task", "classification", "--dataset", "stdlib-tldr", "--out", str(tmp_path / "r")]) == 2
    assert "not a classification data set" in capsys.readouterr().err
