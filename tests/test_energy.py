"""Energy and CO2 (codecarbon's offline tracker): values worked out by hand from its inputs, the method label, the
off switch, no network, savings only against a real full run."""

import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from greencore import TrainConfig, train
from greencore.energy import EnergyMeter, energy_savings
from greencore.plots import comparison_rows, pareto
from greencore.records import load_run

RUN = dict(model="tiny-gpt2", scheme="green:0.6", max_steps=3, max_train_examples=24, max_eval_examples=4,
           batch_size=4, eval_rouge=False, device="cpu")
HAS_POWER_COUNTERS = torch.cuda.is_available() or any(
    os.access(p / "energy_uj", os.R_OK) for p in Path("/sys/class/powercap").glob("intel-rapl:*"))


def test_estimate_matches_a_hand_computation_from_its_inputs():
    """RAM forced to 5 W, CPU idle (this process sleeps): energy = 5 W x the time, CO2 = energy x 100 g/kWh."""
    meter = EnergyMeter(grid_intensity=100.0, tracker_options={"force_ram_power": 5, "force_cpu_power": 10})
    meter.start()
    try:
        meter.cut("evaluation")  # start the measured phase now
        started = time.perf_counter()
        time.sleep(1.0)
        training = meter.cut("training")
        elapsed = time.perf_counter() - started
    finally:
        meter.close()
    hand_kwh = 5.0 * elapsed / 3.6e6
    # the CPU term is 10 W x this process's load, near 0 while it sleeps: at most a few percent on top of the RAM's
    assert hand_kwh * 0.97 <= training["kwh"] <= hand_kwh * 1.1
    assert training["co2_kg"] == pytest.approx(training["kwh"] * 100.0 / 1000.0, rel=1e-9)
    assert meter.grid == {"g_per_kwh": 100.0, "source": "given (--grid-intensity)"}


@pytest.mark.skipif(HAS_POWER_COUNTERS, reason="this machine has a GPU or readable RAPL counters: figures are measured")
def test_method_is_estimated_on_a_machine_without_power_counters():
    meter = EnergyMeter()
    meter.start()
    try:
        assert meter.method.startswith("estimated: ") and "measured" not in meter.method
        assert "CPU from TDP x load" in meter.method and "RAM from its size" in meter.method
    finally:
        meter.close()
    assert EnergyMeter(enabled=False).method is None


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """A run with energy on, while every attempt to open a network connection is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    saved = socket.socket.connect, socket.create_connection, socket.getaddrinfo
    socket.socket.connect, socket.create_connection, socket.getaddrinfo = refuse, refuse, refuse
    # a user's codecarbon configuration asking to send the figures changes nothing
    asked = {"CODECARBON_EMISSIONS_ENDPOINT": "http://127.0.0.1:9/emissions", "CODECARBON_OUTPUT_METHODS": "api,csv"}
    os.environ.update(asked)
    try:
        out = tmp_path_factory.mktemp("energy") / "run"
        summary = train(TrainConfig(**RUN, country="fra"), out)
    finally:
        socket.socket.connect, socket.create_connection, socket.getaddrinfo = saved
        for key in asked:
            del os.environ[key]
    return out, summary, attempts


def test_a_run_records_energy_per_phase_and_sends_nothing(offline_run):
    out, summary, attempts = offline_run
    assert attempts == [] and not list(out.parent.glob("**/emissions.csv")) and not Path("emissions.csv").exists()
    energy = summary["energy"]
    assert energy["training"]["kwh"] > 0 and energy["evaluation"]["kwh"] > 0 and energy["accounting"]["kwh"] > 0
    assert energy["grid_source"] == "codecarbon's offline data for FRA"
    from codecarbon.input import DataSource

    france = DataSource().get_global_energy_mix_data()["FRA"]["carbon_intensity"]
    assert energy["grid_g_per_kwh"] == pytest.approx(france, rel=1e-6)
    for phase in ("training", "evaluation"):
        assert energy[phase]["co2_kg"] == pytest.approx(energy[phase]["kwh"] * france / 1000, rel=1e-6)
    rows = [r for r in load_run(out).metrics if r["type"] == "train"]
    kwh = [r["energy_kwh"] for r in rows]
    assert kwh == sorted(kwh) and 0 < kwh[-1] <= energy["training"]["kwh"]  # live and cumulative
    assert all(r["energy_method"] == energy["method"] for r in rows)
    evals = [r for r in load_run(out).metrics if r["type"] == "eval"]
    assert evals and 0 < evals[-1]["energy_kwh"] == pytest.approx(energy["evaluation"]["kwh"], rel=1e-12)
    assert json.loads((out / "summary.json").read_text())["energy"] == energy


def test_the_off_switch_tracks_nothing(tmp_path, monkeypatch):
    import codecarbon

    def fail(*args, **kwargs):
        raise AssertionError("codecarbon was started with energy=False")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", fail)
    summary = train(TrainConfig(**RUN, energy=False), tmp_path / "run")
    assert summary["energy"] is None
    rows = [r for r in load_run(tmp_path / "run").metrics if r["type"] == "train"]
    assert all(r["energy_kwh"] is None and r["co2_kg"] is None for r in rows)
    assert comparison_rows([summary])[0]["energy"] == "-"


def test_settings_are_checked():
    assert TrainConfig(country=" deu ").country == "DEU"
    with pytest.raises(ValueError, match="--country 'XYZ': codecarbon has no grid data"):
        TrainConfig(country="xyz")
    for bad in (-1.0, math.inf):
        with pytest.raises(ValueError, match="--grid-intensity"):
            TrainConfig(grid_intensity=bad)
    with pytest.raises(ValueError, match="phase="):
        EnergyMeter(enabled=False).cut("warm-up")


def _summary(scheme, kwh, steps=10, **extra):
    energy = {"training": {"kwh": kwh, "co2_kg": kwh * 0.4}, "evaluation": {"kwh": 0.0, "co2_kg": 0.0},
              "method": "estimated: CPU from TDP x load, RAM from its size"}
    return {"scheme": scheme, "label": scheme, "rho": None, "model": "m", "dataset": "d", "steps": steps,
            "train_examples": 80, "flops_total": 1e12, "flops_ratio": 0.5, "wall_seconds": 1.0,
            "rougeL": 20.0, "energy": energy, **extra}


def test_savings_only_against_a_full_run_of_the_same_model_data_and_steps():
    full, green = _summary("full", 0.010), _summary("green:0.5", 0.004)
    assert energy_savings(green, [full, green]) == pytest.approx(0.6)
    assert energy_savings(full, [full, green]) is None  # full against itself: nothing to say
    assert energy_savings(green, [_summary("full", 0.010, steps=20)]) is None
    assert energy_savings(green, [{**full, "model": "other"}]) is None
    assert energy_savings(green, [{**full, "energy": None}]) is None
    rows = comparison_rows([full, green])
    assert rows[1]["energy saved"] == "60.0%" and rows[0]["energy saved"] == "-"
    assert rows[1]["energy"] == "4 Wh (estimated)" and rows[1]["CO2"] == "1.6 g (estimated)"
    assert comparison_rows([green])[0]["energy saved"] == "no full run"


def test_pareto_against_energy_names_the_method():
    runs = [_summary("full", 0.010), _summary("green:0.5", 0.004), _summary("lora", 0.007, energy=None)]
    fig = pareto(runs, x="energy")
    assert sorted(x for trace in fig.data[:-1] for x in trace.x) == [0.004, 0.010]  # the run without energy left out
    assert "estimated" in fig.layout.xaxis.title.text
    assert "4 Wh" in fig.data[1].customdata[0][0]
