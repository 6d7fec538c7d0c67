"""The benchmarks' smoke mode (bench/run_all: every benchmark's --quick version on tiny models) runs and writes
results with the expected structure and sane values."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

# about 1.5-2 minutes on a quiet 2-core machine (several under load); part of the default test run on purpose
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all"), "--results-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return out, proc


def load(out: Path, name: str) -> dict:
    md = (out / f"{name}.md").read_text()
    assert md.startswith(f"# Benchmark: {name}") and "- command: `" in md
    data = json.loads((out / f"{name}.json").read_text())
    assert {"date", "machine", "versions", "command"} <= data["meta"].keys()
    return data


def quality_failures(out: Path) -> list[dict]:
    path = out / "quality_quick.json"
    return json.loads(path.read_text())["failed"] if path.exists() else []


def test_run_all_finishes(results):
    out, proc = results
    assert proc.returncode == 0 and not quality_failures(out), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_selector_dp_beats_heuristics(results):
    data = load(results[0], "selector_quick")
    assert data["headline"] and data["sweep"]
    assert all(0 <= s["mean_gap"] <= s["max_gap"] < 0.05 for s in data["sweep"])
    real = data["real_profiles"]
    assert {e["model"] for e in real} >= {"tiny-gpt2", "tiny-t5"}
    for e in real:
        assert e["dp"]["chain_ratio"] <= e["rho"] + 1e-9
        for method in ("greedy", "greedy_static", "top_k"):
            assert e[method]["chain_ratio"] <= e["rho"] + 1e-9
            assert e["dp"]["objective"] >= e[method]["objective"] - 1e-9 * abs(e[method]["objective"]), (e, method)
    assert data["real_dp_at_least_heuristics"]


def test_flops_model_predicts_measurements(results):
    data = load(results[0], "flops_model_quick")
    models = {m["model"]: m for m in data["models"]}
    assert set(models) == {"tiny-opt", "tiny-bloom", "tiny-gpt2", "tiny-llama", "tiny-t5"}
    for m in models.values():
        assert m["masks"] >= data["random_masks"] + 3
        assert m["max_rel_error"] < 0.02 and m["median_rel_error"] <= m["max_rel_error"]
        assert m["chain_over_min"] >= -1e-9  # the selector's chain model never under-estimates
        assert {c["mask"] for c in m["cases"]} >= {"first-only", "last-only", "all"}
        assert all(c["measured"] > 0 for c in m["cases"])
    heads = {h["model"]: h for h in data["head_costs"]}
    assert set(heads) == set(models)
    for name, h in heads.items():
        ours, own = h["greencore_loss"], h["own_loss"]
        if name == "tiny-t5":  # an encoder-decoder keeps its own loss
            assert h["scored_positions"] == 0 and ours == own
        else:  # the head runs on fewer positions: a cheaper step, and a block within reach at a smaller rho
            assert h["label_tokens"] <= h["scored_positions"] < h["batch"][0] * h["batch"][1]
            assert ours["full_flops"] < own["full_flops"] and ours["t_fp"] < own["t_fp"]
            assert ours["min_rho"] <= ours["rho_to_reach_a_block"] < own["rho_to_reach_a_block"]


def test_quality_runs_and_checks(results):
    out = results[0]
    data = load(out, "quality_quick")
    runs, failed = data["runs"], data["failed"]
    labels = {(r["label"], r["seed"]) for r in runs} | {(f["label"], f["seed"]) for f in failed}
    expected = {(s, 0) for s in ("full", "lora", "top-k:2", "layernorm", "green:0.4", "green:0.5", "green:0.6",
                                 "green:0.7", "random:0.5")} | {(s, 1) for s in ("full", "lora", "green:0.5")}
    assert labels == expected and not data["pending"] and not failed, failed
    # the learning-rate grid: each family's pick is the lowest validation loss it tried, and its runs use it
    grid = data["lr_grid"]
    assert set(grid["picked"]) == {"full", "lora", "top-k:2", "layernorm", "green:0.5"}
    for family, lr in grid["picked"].items():
        tried = {g["lr"]: g["val_loss"] for g in grid["runs"] if g["family"] == family}
        assert set(grid["start"]) <= set(tried) and tried[lr] == min(tried.values())
    family = {"green": "green:0.5", "random": "green:0.5"}
    assert all(r["lr"] == grid["picked"][family.get(r["scheme"], r["label"])] for r in runs)
    zero = data["zero_shot"]
    assert zero["label"] == "zero-shot" and zero["steps"] == 0 and math.isfinite(zero["val_loss"])
    assert "every_run_above_zero_shot" in data["checks"]
    by = {(r["label"], r["seed"]): r for r in runs}
    assert by[("full", 0)]["flops_ratio"] == 1.0 and by[("full", 0)]["flops_selection"] == 0
    for r in runs:
        assert r["status"] == "finished" and r["steps"] > 0
        assert r["flops_total"] == pytest.approx(r["flops_training"] + r["flops_selection"])
        assert r["flops_ratio"] == pytest.approx(r["flops_total"] / r["flops_full_equivalent"])
        assert 0 < r["flops_ratio_training"] <= 1.0 + 1e-9
        if r["scheme"] in ("green", "random"):
            assert r["flops_ratio_training"] <= r["rho"] + 0.03 and r["flops_selection"] > 0
            assert r["selected_tensors"] and r["predicted_ratio"][0] <= r["rho"] + 1e-9
        for key in ("rouge1", "rouge2", "rougeL"):
            assert 0 <= r[key] <= 100
        assert math.isfinite(r["val_loss"]) and r["val_loss"] > 0
        # tiny-gpt2's tied vocabulary projection leaves rho 0.4 room for nothing: that run trains no tensor at all
        nothing = r["scheme"] == "green" and r["selected_tensors"] == [0]
        assert r["wall_seconds"] > 0 and (r["trainable_params"] > 0 or nothing)
        # each run had a process of its own, so its peak resident set is its own (none is left out as shared)
        assert r["peak_memory_bytes"] is not None and r["peak_memory_bytes"] >= 0 and 0 < r["cpu_share"] <= 1.5
    assert {s["label"] for s in data["spread"]} == {"full", "lora", "green:0.5"}
    assert {"green_0.5_vs_full_first_seed", "random_0.5_below_green_0.5"} <= data["checks"].keys()
    if data["plot"]:
        assert (out / data["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_is_resumable(results, tmp_path):
    """A second invocation reads the finished runs back instead of training them again."""
    out = results[0]
    work = out / "work" / "quality_quick"
    done = [p for p in work.iterdir() if (p / "summary.json").exists()]
    assert done
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_quality.py"), "--quick", "--schemes", "full",
                           "--seeds", "0", "--results-dir", str(tmp_path), "--work-dir", str(work)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished earlier, read back" in proc.stdout
    again = json.loads((tmp_path / "quality_quick.json").read_text())
    first = {(r["label"], r["seed"]): r for r in load(out, "quality_quick")["runs"]}
    assert again["runs"][0]["flops_total"] == first[("full", 0)]["flops_total"]


def test_ablation_runs_each_kind_of_change(results):
    """Issue 18's ablation: the paper's row and one run per kind of option, each doing what its variant says."""
    from greencore.records import load_run

    out, _ = results
    data = load(out, "ablation_quick")
    assert [r["variant"] for r in data["runs"]] == ["paper", "split-tied", "probe-step-10"] and data["complete"]
    assert all(0 < r["flops_ratio"] < 1.5 and math.isfinite(r["val_loss"]) for r in data["runs"])
    work = out / "work" / "ablation_quick"
    split = load_run(work / "split-tied-seed0")
    assert split.profile().names[0] == "lm_head.weight" and split.config["split_tied"]
    assert [s["probe"] for s in load_run(work / "probe-step-10-seed0").selections] == ["step"]
    assert "| paper | 0 |" in (out / "ablation_quick.md").read_text()


def test_classification_runs_every_scheme_as_predicted(results):
    out = results[0]
    data = load(out, "classification_quick")
    assert data["complete"] and [r["label"] for r in data["runs"]] == ["full", "green:0.5", "lora", "layernorm"]
    for r in data["runs"]:
        assert r["status"] == "finished" and r["prediction_miss"] == 0, r
        assert 0 <= r["accuracy"] <= 100 and 0 <= r["majority_accuracy"] <= 100 and len(r["val_losses"]) == 1
    full = data["runs"][0]
    assert full["flops_ratio"] == 1.0 and "green_0.5_within_1_point_of_full" in data["checks"]
    gap = data["checks"]["green_0.5_within_1_point_of_full"]["accuracy_gap"]
    assert gap == pytest.approx(full["accuracy"] - data["runs"][1]["accuracy"])


def test_speed_and_overhead(results):
    out = results[0]
    speed = load(out, "speed_quick")
    configs = {r["config"]: r for r in speed["results"]}
    assert configs["full"]["time_ratio"] == 1.0 and configs["full"]["measured_ratio"] == 1.0
    for r in speed["results"]:
        assert r["median_seconds"] > 0 and len(r["total"]) == speed["repeats"]
        assert abs(r["predicted_ratio"] - r["measured_ratio"]) < 0.02
        if r["rho"] is not None and r["rho"] < 1:
            assert r["predicted_ratio"] <= r["rho"] + 1e-9
    assert "green:0.5" in configs and speed["target"]["time_ratio"] is not None

    overhead = load(out, "overhead_quick")
    assert overhead["parts"]["importance"]["flops"] > 0 and overhead["parts"]["profile"]["flops"] > 0
    for key in ("reselection", "reselection_with_profile"):
        r = overhead[key]
        assert r["seconds"] > 0 and r["flops"] > 0
        assert r["flops_share_of_green_epoch"] > r["flops_share_of_full_epoch"] > 0
    assert 0 < overhead["epoch"]["measured_ratio"] <= overhead["rho"] + 0.03


def test_full_size_profiles_allocate_no_weights(results):
    data = load(results[0], "full_size_quick")
    rows = {r["model"]: r for r in data["rows"]}
    big = rows["llama-3-8b"]
    assert big["parameters"] == 8_030_261_248 and big["tensors"] == 32 * 9 + 3
    assert big["full"] == 3 * big["t_fp"] and big["t_fp"] + big["t_dy"] + big["t_dw"] == big["full"]
    # 30 GiB of fp32 weights would be needed; the process grew by far less than one of its 32 blocks' weights
    assert big["fp32_weight_gib"] > 29 and big["peak_rss_mib"] - data["baseline_peak_rss_mib"] < 512
    assert 0 < big["most_parameters_share"] < 1 and 0 < big["blocks_reached"] < 32
    assert data["largest"]["model"] == "llama-3-8b" and data["largest"]["met"]


def test_memory_peaks_come_from_the_profilers_timeline(results):
    data = load(results[0], "memory_quick")
    rows = {r["scheme"]: r for r in data["results"]}
    assert rows["full"]["ratio_to_full"] == 1.0 and set(rows) == {"full", "lora", "top-k:2", "green:0.4",
                                                                   "green:0.5", "green:0.7"}
    for r in rows.values():
        # the peak is the weights (counted once, by hand) plus what the timeline saw alive at that moment
        assert r["peak_bytes"] == r["weights_bytes"] + sum(r["at_peak"].values())
        assert r["trainable_params"] > 0
    full = rows["full"]
    # AdamW keeps two moments per trained parameter and a gradient of each is alive at the peak of full training
    assert full["at_peak"]["optimizer state"] >= 2 * 4 * full["trainable_params"]
    assert rows["green:0.4"]["peak_bytes"] < full["peak_bytes"] and rows["lora"]["peak_bytes"] < full["peak_bytes"]


def test_gpu_check_exits_at_once_without_cuda():
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA: bench/gpu_check would run")
    proc = subprocess.run([str(ROOT / "bench" / "gpu_check")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and not proc.stdout


def test_gpu_check_runs_and_reports_on_the_cpu(monkeypatch, tmp_path):
    """The device check's runs and table, with its CUDA settings swapped for a tiny model on the CPU."""
    sys.path.insert(0, str(ROOT))
    from bench import gpu_check

    monkeypatch.setattr(gpu_check, "RUN", {**gpu_check.RUN, "model": "tiny-llama", "device": "cpu", "precision": "fp32",
                                           "energy": False, "batch_size": 4, "max_source_tokens": 32,
                                           "max_target_tokens": 32, "max_eval_examples": 4})
    rows = [gpu_check.run_scheme(s, 2, tmp_path) for s in gpu_check.SCHEMES]
    gpu_check.ratios(rows)
    full, half, _ = rows
    assert all(r["steps"] == 2 for r in rows) and full["flops_ratio"] == 1.0 and full["time_ratio"] == 1.0
    # on a CPU the peak is the resident set's growth, often 0 for a tiny model in a process that ran another
    assert all(r["peak_memory_bytes"] >= 0 for r in rows)
    assert 0 < half["flops_ratio_training"] <= 0.5 + 1e-9 < half["flops_ratio"]  # a 2-step run: selection weighs
    assert half["precision"] == "fp32" and half["prediction_miss"] == 0
    assert half["time_ratio"] == half["median_step_seconds"] / full["median_step_seconds"]
    md = gpu_check.table(rows, None, "cpu")
    assert md.count("\n| green:") == 2 and "batch 4 x 64 tokens" in md


@pytest.mark.slow  # four 2-rank launches and a read-back, about a minute
def test_fsdp_bench_holds_half_per_rank_and_trains_the_same(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_fsdp.py"), "--quick", "--results-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = load(tmp_path, "fsdp_quick")
    rows = {(r["scheme"], r["strategy"]): r for r in data["rows"]}
    assert set(rows) == {(s, t) for s in ("full", "green:0.5") for t in ("ddp", "fsdp")}
    mib = 2**20
    weights = rows[("full", "ddp")]["trainable_params"] * 4  # fp32; full fine-tuning trains every unique tensor
    for scheme in ("full", "green:0.5"):
        ddp, fsdp = rows[(scheme, "ddp")], rows[(scheme, "fsdp")]
        assert all(round(b * mib) == weights for b in ddp["parameter_mib_per_rank"])
        assert round(sum(fsdp["parameter_mib_per_rank"]) * mib) == weights  # each rank holds its half, no more
        # two AdamW moments per trained parameter (plus a 4-byte step count per tensor, kept whole on every rank)
        moments = 2 * 4 * ddp["trainable_params"]
        assert 0 <= ddp["optimizer_mib_per_rank"][0] * mib - moments < 4096
        assert 0 <= sum(fsdp["optimizer_mib_per_rank"]) * mib - moments < 2 * 4096
        # the same steps: the loss within float rounding, the measured FLOPs exactly
        assert fsdp["val_loss"] == pytest.approx(ddp["val_loss"], rel=1e-5)
        assert fsdp["flops_per_rank"] == ddp["flops_per_rank"]
        for r in (ddp, fsdp):
            held = [p + o for p, o in zip(r["parameter_mib_per_rank"], r["optimizer_mib_per_rank"])]
            assert all(peak > h for peak, h in zip(r["step_peak_mib_per_rank"], held))
        assert max(fsdp["step_peak_mib_per_rank"]) < min(ddp["step_peak_mib_per_rank"])
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_fsdp.py"), "--quick", "--results-dir",
                            str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished earlier, read back") == 4
    assert load(tmp_path, "fsdp_quick")["rows"] == data["rows"]
