"""The Gradio app: its handlers called directly, and the served app driven with gradio_client."""

import re
from pathlib import Path
import socket
import time

import numpy as np
import pytest
import torch

from greencore_app import handlers
from greencore_app import runs as background
from greencore_app.main import LAUNCH_OPTIONS, build_app
from greencore import TrainConfig, plots, select_tensors, train
from greencore.explore import ExploreSpec, explore
from greencore.records import checkpoints, load_run
from greencore.select import round_rho_up

TINY = dict(model="tiny-gpt2", dataset="stdlib-tldr", batch_size=2, seq_len=64, metric="taylor", probe_batches=1)
TINY_SPEC = ExploreSpec(**TINY)
# Start-run form values, in the order of handlers.start_run after (runs_dir, runs)
RUN_FORM = dict(model="tiny-gpt2", dataset="stdlib-tldr", scheme="green", rho=0.5, k=2, epochs=1, max_steps=3,
                batch_size=4, lr=1e-3, interval=1, interval_unit="epoch", max_train_examples=32,
                max_eval_examples=8, num_beams=1, eval_rouge=False)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: the app's runs and handlers share 2 busy cores, where 2 threads each run 3-5x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def profile(rho=0.5, color_by="selected", current=None, config_only=False, **overrides):
    return handlers.profile_choice(current, *{**TINY, **overrides}.values(), rho, color_by, config_only)


def skipped(value) -> bool:
    return value == handlers.SKIP


def selected_cells(fig) -> set[str]:
    """Names of the tensors drawn as selected in a selection heatmap (z == 1), read from the hover text."""
    trace = fig.data[0]
    names = set()
    for z_row, text_row in zip(trace.z, trace.text):
        for z, text in zip(z_row, text_row):
            if z == 1:
                names.add(re.match(r"<b>(.*?)</b>", text).group(1))
    return names


def start(tmp_path, runs=(), **overrides):
    runs, message, dropdown = handlers.start_run(tmp_path, list(runs), *{**RUN_FORM, **overrides}.values())
    assert message.startswith(("Started", "Queued")), message
    return runs, runs[-1]


def steps_done(path) -> int:
    try:
        return sum(m["type"] == "train" for m in load_run(path).metrics)
    except ValueError:  # no config.json yet: the run is still loading
        return 0


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# ----------------------------------------------------------------------------------------------------------- Explore


def test_explore_figures_show_exactly_the_selection():
    spec, *view = profile()
    assert spec == TINY_SPEC
    ex = explore(spec)
    for rho in (0.5, 0.8):
        view = handlers.update_selection(spec, rho, "selected")
        expected = select_tensors(ex.profile, ex.importance, rho)
        assert view.message == ""
        assert selected_cells(view.heatmap) == set(expected.trainable)
        assert view.selection["mask"] == expected.mask.tolist()
        assert f"rho = {rho:.2f}" in view.summary
        assert view.tradeoff.layout.shapes[0].x0 == rho  # the current rho is marked
        bar_names = [t.name for t in view.breakdown.data if t.type == "bar"]
        assert bar_names == ["forward", "activation gradients", "weight gradients", "saved vs full"]
    for color_by in ("importance", "t_dw", "t_dy"):
        heat = handlers.update_selection(spec, 0.5, color_by).heatmap.data[0]
        assert np.nanmax(np.array(heat.z, dtype=float)) > 0


def test_explorations_are_cached_and_share_the_profile_across_metrics():
    ex = explore(TINY_SPEC)
    assert explore(ExploreSpec(**TINY)) is ex
    fisher = explore(ExploreSpec(**{**TINY, "metric": "fisher"}))
    assert fisher.profiled is ex.profiled and not np.allclose(fisher.importance, ex.importance)
    assert ex.tradeoff(0.5).layout.shapes[0].x0 == 0.5 and not ex.tradeoff().layout.shapes


def test_config_only_explore_is_labelled_structural():
    spec, message, summary, heatmap, breakdown, tradeoff, selection = profile(model="llama-3-8b", metric="params",
                                                                              config_only=True)
    assert message == "" and spec.config_only and spec.metric == "params"
    ex = explore(spec)
    assert all(p.device.type == "meta" for p in ex.profiled.model.parameters())
    sizes = [p.numel() for p in dict(ex.profiled.model.named_parameters()).values()]
    expected = select_tensors(ex.profile, tensor_sizes(ex), 0.5)
    assert selection["mask"] == expected.mask.tolist() and selected_cells(heatmap) == set(expected.trainable)
    assert "Config only (no weights)" in summary and "not the selection GreenTrainer would learn" in summary
    assert "not GreenTrainer's learned choice" in heatmap.layout.title.text
    assert [t.name for t in tradeoff.data] == ["blocks backprop can reach", "most parameters trainable"]
    assert "meta device" in handlers.measure_selection(spec, 0.5) and sum(sizes) == 8_030_261_248
    # a data metric, or an architecture without config only, is a message
    assert "needs the model's weights" in profile(model="llama-3-8b", config_only=True)[1]
    assert "config only" in profile(model="llama-3-8b")[1]


def test_explore_form_switches_with_config_only():
    model, metric, dataset, probes = handlers.explore_form(True, "smollm2", "taylor")
    assert "llama-3-70b" in model["choices"] and model["value"] == "smollm2"
    assert metric["choices"] == ["uniform", "params"] and metric["value"] == "uniform"
    assert dataset["interactive"] is False and probes["interactive"] is False
    model, metric, dataset, probes = handlers.explore_form(False, "llama-3-70b", "params")
    assert "llama-3-70b" not in model["choices"] and model["value"] == ExploreSpec().model
    assert metric["value"] == "taylor" and dataset["interactive"] is True


def tensor_sizes(ex) -> np.ndarray:
    params = dict(ex.profiled.model.named_parameters())
    return np.array([float(params[n].numel()) for n in ex.profile.names])


def test_rho_below_the_minimum_and_invalid_rho_give_messages():
    spec = profile()[0]
    profile_ = explore(spec).profile
    floor = round_rho_up(profile_.min_training_rho)
    for rho in (0.2, (profile_.min_rho + profile_.min_training_rho) / 2):  # below the forward pass, and above it
        low = handlers.update_selection(spec, rho, "selected")
        assert "trains no tensor" in low.message and f"choose rho >= {floor:.3f}" in low.message
    assert f"smallest rho that trains a tensor is **{floor:.3f}**" in handlers.update_selection(spec, 0.5,
                                                                                              "selected").summary
    assert not skipped(handlers.update_selection(spec, floor, "selected").heatmap)
    assert all(skipped(fig) for fig in (low.heatmap, low.breakdown, low.tradeoff))
    for rho in (None, 1.5, float("nan")):
        assert handlers.update_selection(spec, rho, "selected").message.startswith("⚠️")
    assert "trains no tensor" in handlers.measure_selection(spec, 0.1)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"model": "no-such-model-xyz"}, "model 'no-such-model-xyz' is not a built-in"),
        ({"model": "tiny-opts"}, "did you mean the built-in 'tiny-opt'?"),
        ({"dataset": "/nonexistent/data.jsonl"}, "does not exist"),
        ({"batch_size": 0}, "batch size must be a whole number"),
        ({"batch_size": 2.5}, "batch size must be a whole number >= 1, got 2.5"),  # refused, not rounded
        ({"seq_len": 100000}, "longer than the 512 positions gpt2 models have"),  # issue 11: the server grew to 10 GB
        ({"batch_size": 10**6, "seq_len": 512}, "GiB of activations (a rough upper bound, not measured)"),
        ({"metric": "bogus"}, "use one of taylor"),
    ],
)
def test_bad_explore_input_gives_a_message(overrides, expected):
    spec, message, *view = profile(current=TINY_SPEC, **overrides)
    assert expected in message and message.startswith("⚠️")
    assert spec == TINY_SPEC and all(skipped(x) for x in view)  # the last good exploration stays in place


def test_unreadable_data_file_gives_a_message(tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_bytes(b'{"source": "a"\n\xff\xfe')
    spec, message, *_ = profile(dataset=str(data))
    assert spec is None and message.startswith("⚠️ could not read data set") and "broken.jsonl" in message
    runs, message, _ = handlers.start_run(tmp_path, [], *{**RUN_FORM, "dataset": str(data)}.values())
    assert runs == [] and message.startswith("⚠️ could not read data set")


def test_measured_ratio_matches_the_prediction():
    spec = profile()[0]
    text = handlers.measure_selection(spec, 0.6)
    measured, predicted = (float(x) / 100 for x in re.findall(r"([\d.]+)%", text)[:2])
    assert measured == pytest.approx(predicted, abs=0.02)


# ------------------------------------------------------------------------------------------------------------- Train


def test_training_run_through_the_handler_shows_its_curves(tmp_path):
    runs, path = start(tmp_path)
    background.get(path).thread.join(120)
    status, loss, flops, signature = handlers.live_view(runs)
    assert "finished" in status
    last = [r for r in load_run(path).metrics if r["type"] == "train"][-1]
    tag = plots.energy_tag({"method": last["energy_method"]})  # "estimated" on a machine without power counters
    assert f"{plots.format_energy(last['energy_kwh'])}, {plots.format_co2(last['co2_kg'])} CO2 ({tag})" in status
    names = [t.name for t in loss.data]
    assert any(n.endswith("(train)") for n in names) and any(n.endswith("(validation)") for n in names)
    assert len(loss.data[0].x) == 3
    assert {t.name.rsplit("(", 1)[1] for t in flops.data} == {"measured)", "full fine-tuning equivalent)"}
    # nothing changed: the next poll leaves the figures alone
    assert all(skipped(x) for x in handlers.live_view(runs, signature)[:3])
    view = handlers.selection_view(runs, path, None, "selected")
    assert view.timeline.data and view.heatmap.data
    selection = load_run(path).selections[0]
    assert selected_cells(view.heatmap) == {n for n, m in zip(selection["names"], selection["mask"]) if m}


def test_a_run_heatmap_shows_the_profile_the_run_saved(tmp_path):
    """The run's per-tensor FLOPs come from its profile.json, not from a fresh profile of its model."""
    import json

    runs, path = start(tmp_path)
    background.get(path).thread.join(120)
    saved = tmp_path / path / "profile.json"
    data = json.loads(saved.read_text())
    data["t_dw"] = [3.0 * x + 7.0 for x in data["t_dw"]]  # numbers no profile of the model would give
    saved.write_text(json.dumps(data))
    view = handlers.selection_view(runs, path, None, "t_dw")
    record = load_run(path)
    selection = record.selections[0]
    expected = plots.selection_heatmap(record.profile(), selection["mask"], selection["importance"], color_by="t_dw")
    assert [list(row) for row in view.heatmap.data[0].z] == [list(row) for row in expected.data[0].z]
    saved.unlink()
    view = handlers.selection_view(runs, path, None, "selected", last=None)
    assert "profile.json" in view.message and view.heatmap is None


def test_stop_ends_a_run_cleanly_with_a_checkpoint(tmp_path):
    runs, path = start(tmp_path, scheme="full", max_steps=0, max_train_examples=400)
    wait_for(lambda: steps_done(path) > 0)
    assert handlers.stop_run(runs, path).startswith("Stopping")
    background.get(path).thread.join(60)
    record = load_run(path)
    assert record.summary["status"] == "stopped"
    assert record.summary["steps"] < 100
    assert checkpoints(path)[-1].name == f"step-{record.summary['steps']}"
    assert "already ended" in handlers.stop_run(runs, path)


def test_bad_train_settings_give_messages(tmp_path):
    for overrides, expected in [
        ({"rho": 1.5}, "must be in (0, 1]"),
        ({"rho": None}, "set rho to a fraction"),  # an emptied rho field
        ({"scheme": "nonsense"}, "unknown scheme"),
        ({"dataset": str(tmp_path / "missing.csv")}, "does not exist"),
        ({"epochs": 0}, "epochs must be a whole number"),
        ({"batch_size": 2.5}, "batch size must be a whole number >= 1, got 2.5"),
        ({"lr": None}, "learning rate is empty: enter a number"),  # was "Unexpected error (TypeError ...)"
    ]:
        runs, message, dropdown = handlers.start_run(tmp_path, [], *{**RUN_FORM, **overrides}.values())
        assert runs == [] and expected in message and skipped(dropdown)
    # infeasible rho is found by the run itself: the status table says why it failed
    runs, path = start(tmp_path, rho=0.2)
    background.get(path).thread.join(60)
    assert "trains no tensor" in handlers.live_view(runs)[0]


def test_sessions_keep_their_own_explore_state_and_runs(tmp_path):
    spec_a = profile()[0]
    spec_b = profile(model="tiny-opt")[0]
    view_a = handlers.update_selection(spec_a, 0.7, "selected")
    view_b = handlers.update_selection(spec_b, 0.7, "selected")
    assert "tiny-gpt2" in view_a.summary and "tiny-opt" in view_b.summary
    assert handlers.update_selection(spec_a, 0.7, "selected").selection == view_a.selection
    runs_a, path = start(tmp_path, scheme="full", max_steps=1)
    runs_b: list[str] = []
    assert "Choose one of the runs started in this session" in handlers.stop_run(runs_b, path)
    assert "No runs started" in handlers.live_view(runs_b)[0]
    background.get(path).thread.join(60)


# ----------------------------------------------------------------------------------------------------------- Compare


def test_compare_lists_runs_written_by_the_engine(tmp_path):
    config = dict(model="tiny-gpt2", max_train_examples=32, max_eval_examples=4, batch_size=4, max_steps=2,
                  num_beams=1)
    train(TrainConfig(scheme="full", eval_rouge=True, **config), tmp_path / "cli" / "full")
    train(TrainConfig(scheme="green", rho=0.6, eval_rouge=False, **config), tmp_path / "cli" / "green-0.6")
    (tmp_path / "not-a-run").mkdir()
    message, table, pareto = handlers.compare_runs(tmp_path)
    assert "2 run(s)" in message
    rows = table.set_index("directory")
    assert rows.loc["cli/full", "scheme"] == "full" and rows.loc["cli/full", "savings"] == "0.0%"
    assert rows.loc["cli/green-0.6", "rho"] == "0.6" and rows.loc["cli/green-0.6", "ROUGE-L"] == "-"
    assert rows.loc["cli/full", "ROUGE-L"] != "-"
    assert [t.name for t in pareto.data][0] == "full"  # only the scored run is a point
    # the same steps on the same data: green's energy saving is measured against the full run
    green = load_run(tmp_path / "cli" / "green-0.6").summary
    full = load_run(tmp_path / "cli" / "full").summary
    saved = 1 - green["energy"]["training"]["kwh"] / full["energy"]["training"]["kwh"]
    assert rows.loc["cli/green-0.6", "energy saved"] == f"{100 * saved:.1f}%"
    tag = plots.energy_tag(full["energy"])
    assert rows.loc["cli/full", "energy"].endswith(f"({tag})") and rows.loc["cli/full", "CO2"].endswith(f"({tag})")
    _, _, by_energy = handlers.compare_runs(tmp_path, "training energy")
    assert list(by_energy.data[0].x) == [full["energy"]["training"]["kwh"]]
    assert "training energy" in by_energy.layout.xaxis.title.text


def test_compare_opens_the_quality_benchmarks_run_folders():
    """The committed smollm2 quality runs (bench/results/quality_smollm2/) open in Compare, each finished run of the
    benchmark's results file with its ROUGE-L (the grid's short runs, scored by loss only, are listed too)."""
    import json

    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    runs = json.loads((results / "quality_smollm2.json").read_text())["runs"]
    message, table, pareto = handlers.compare_runs(results / "quality_smollm2")
    rows = table.set_index("directory")
    assert runs and f"{len(table)} run(s)" in message
    for r in runs:
        assert rows.loc[r["run_dir"], "ROUGE-L"] == f"{r['rougeL']:.1f}", r["run_dir"]
    assert {t.name for t in pareto.data} >= {r["scheme"] for r in runs}


def test_compare_of_an_empty_directory(tmp_path):
    message, table, pareto = handlers.compare_runs(tmp_path / "nothing")
    assert "No finished runs" in message and table.empty
    assert list(table.columns) == handlers.compare_columns() and "ROUGE-L" in table.columns


# ------------------------------------------------------------------------------------------------- served app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    demo = build_app(tmp_path_factory.mktemp("runs"), explore_defaults=TINY_SPEC, profile_on_load=False)
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                        **LAUNCH_OPTIONS)
    yield demo.local_url
    demo.close()


def test_served_app_selects_per_session(served):
    from gradio_client import Client

    a = Client(served, verbose=False, analytics_enabled=False)
    b = Client(served, verbose=False, analytics_enabled=False)
    message, *_ = a.predict(*TINY.values(), 0.5, "selected", api_name="/profile")
    assert message == ""
    b.predict("tiny-opt", *list(TINY.values())[1:], 0.5, "selected", api_name="/profile")
    message, summary, heatmap, breakdown, tradeoff, selection = a.predict(0.7, "selected", api_name="/select")
    ex = explore(TINY_SPEC)
    assert selection["mask"] == select_tensors(ex.profile, ex.importance, 0.7).mask.tolist()
    assert "tiny-gpt2" in summary
    assert "tiny-opt" in b.predict(0.7, "selected", api_name="/select")[1]  # b's own state
    low = a.predict(0.1, "selected", api_name="/select")[0]
    assert "trains no tensor" in low
    assert "Measured on the cached batch" in a.predict(0.7, api_name="/measure")
    fresh = Client(served, verbose=False, analytics_enabled=False)  # a new session has no profile yet
    assert "press **Profile**" in fresh.predict(0.5, "selected", api_name="/select")[0]


def test_served_app_profiles_a_config_only_model(served):
    from gradio_client import Client

    client = Client(served, verbose=False, analytics_enabled=False)
    message, summary, *_ = client.predict("llama-3-70b", "stdlib-tldr", 1, 64, "params", 1, 0.5, "selected", True,
                                          api_name="/profile")
    assert message == "" and "Config only (no weights)" in summary and "llama-3-70b" in summary
    assert "meta device" in client.predict(0.5, api_name="/measure")


def test_runs_started_together_train_one_at_a_time_and_match_a_run_alone(tmp_path):
    """Issue 11, item 4: two runs started at once used to share the process's RNGs and both change their numbers."""
    runs, alone = start(tmp_path / "alone")
    background.get(alone).thread.join(120)
    runs, first = start(tmp_path / "pair")
    runs, message, _ = handlers.start_run(tmp_path / "pair", runs, *RUN_FORM.values())
    second = runs[-1]
    assert message.startswith("Queued") and "1 run(s) ahead" in message
    assert background.get(second).status == "queued, 1 ahead"
    runs, message, _ = handlers.start_run(tmp_path / "pair", runs, *RUN_FORM.values())
    cancelled = runs[-1]
    assert "Cancelled" in handlers.stop_run(runs, cancelled)
    for path in (first, second, cancelled):
        background.get(path).thread.join(120)
    assert background.get(cancelled).status == "cancelled" and not Path(cancelled).exists()

    def losses(path):
        return [m["loss"] for m in load_run(path).metrics if m["type"] == "train"]

    assert len(losses(alone)) == 3 and losses(first) == losses(alone) == losses(second)


def test_train_tab_starts_from_the_demo_config(tmp_path):
    """The Train tab's defaults are `TrainConfig.demo()`: the default scheme at the demo's budget, cut to minutes on
    a CPU."""
    from greencore.training.config import DEMO

    demo = build_app(tmp_path, explore_defaults=TINY_SPEC, profile_on_load=False)
    shown = {c.elem_id: c.value for c in demo.blocks.values()
             if getattr(c, "elem_id", None) in ("max-steps", "train-batch", "max-train", "max-eval", "num-beams")}
    expected = TrainConfig.demo()
    assert shown == {"max-steps": expected.max_steps, "train-batch": expected.batch_size,
                     "max-train": expected.max_train_examples, "max-eval": expected.max_eval_examples,
                     "num-beams": expected.num_beams}
    changed = {k for k, v in expected.to_dict().items() if v != TrainConfig().to_dict()[k]}
    assert changed == set(DEMO) and expected.max_steps < 50  # the budget and the size of the run differ, nothing else
    assert expected.spec.name == TrainConfig().spec.name == "green"


def test_a_classification_run_from_the_train_tab_shows_accuracy_in_compare(tmp_path):
    runs, path = start(tmp_path, model="tiny-llama", dataset="", max_steps=2, precision="auto",
                       task="classification")
    background.get(path).thread.join(120)
    summary = load_run(path).summary
    assert summary["status"] == "finished" and summary["task"] == "classification"
    assert summary["dataset"] == "stdlib-topic"  # the task's default, from an empty data set field
    message, table, pareto = handlers.compare_runs(tmp_path)
    row = table.set_index("directory").loc[Path(path).name]
    assert row["accuracy"] == f"{summary['accuracy']:.1f}" and row["majority accuracy"] != "-"
    assert "ROUGE-L" not in table.columns and list(pareto.data[0].y) == [summary["accuracy"]]
    update = handlers.task_form("classification")
    assert update["value"] == "stdlib-topic" and "sst2" in update["choices"]


def test_explore_profiles_a_classifier_from_the_form():
    state, message, summary, heatmap, *_ = handlers.profile_choice(
        None, "tiny-llama", "", 2, 32, "taylor", 1, 0.5, "selected", False, "classification")
    assert state is not None and state.task == "classification" and state.dataset == "stdlib-topic", message
    assert heatmap.data
    state, message, *_ = handlers.profile_choice(
        None, "tiny-llama", "stdlib-tldr", 2, 32, "taylor", 1, 0.5, "selected", False, "classification")
    assert state is None and "not a classification data set" in message


def test_the_train_tab_switches_issue_18_options(tmp_path):
    """The accordion's options reach the run's config; an impossible pair is a message, not a run."""
    demo = build_app(tmp_path, explore_defaults=TINY_SPEC, profile_on_load=False)
    shown = {c.elem_id: c.value for c in demo.blocks.values()
             if getattr(c, "elem_id", None) in ("split-tied", "probe", "importance-ema", "rho-shift")}
    default = TrainConfig()
    assert shown == {"split-tied": default.split_tied, "probe": default.probe, "importance-ema": default.importance_ema,
                     "rho-shift": default.rho_shift}
    runs, path = start(tmp_path, rho=0.6, max_steps=2, interval=1, interval_unit="step", precision="auto",
                       task="summarization", split_tied=False, probe="step", importance_ema=0.5, rho_shift=0.1)
    background.get(path).thread.join(120)
    record = load_run(path)
    assert record.summary["status"] == "finished"
    assert (record.config["probe"], record.config["importance_ema"], record.config["rho_shift"]) == ("step", 0.5, 0.1)
    assert [s["probe"] for s in record.selections] == ["step", "step"]
    assert [s["rho"] for s in record.selections] == pytest.approx([0.65, 0.55])  # 0.6 + 0.1 (1 - (a + b) / 2)
    runs, message, dropdown = handlers.start_run(tmp_path, [], *{**RUN_FORM, "precision": "auto",
                                                                 "task": "summarization", "split_tied": True,
                                                                 "probe": "step", "importance_ema": 0.0}.values())
    assert runs == [] and "must be off with --probe step" in message and skipped(dropdown)
