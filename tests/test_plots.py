"""Figures against values computed by hand from the profile arrays, the selector and the run records."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from conftest import token_batch
from greencore import plots
from greencore.layout import TensorLayout
from greencore.plots import (
    comparison_rows,
    flops_breakdown,
    flops_progress,
    format_flops,
    loss_curves,
    pareto,
    selection_heatmap,
    selection_timeline,
    tradeoff_curve,
)
from greencore.profile import TensorProfile, profile_model
from greencore.select import select_tensors

# A two-block decoder in backprop order (index 0 nearest the loss): (name, block, type, t_dy, t_dw).
HAND = [
    ("head.weight", None, "lm_head.weight", 1e6, 4e6),
    ("norm.weight", None, "norm.weight", 0.0, 1e3),
    ("b1.fc.weight", 1, "mlp_in.weight", 3e6, 8e6),
    ("b1.q.weight", 1, "q.weight", 2e6, 2.5e6),
    ("b1.q.bias", 1, "q.bias", 5e5, 2e3),
    ("b0.v.weight", 0, "v.weight", 2e6, 2.5e6),
    ("embed.weight", None, "embed.weight", 0.0, 5e5),
]
HAND_MASK = np.array([True, False, True, False, True, False, False])
HAND_IMPORTANCE = np.array([0.5, -0.25, 2.0, 1e-3, 0.0, 3.0, -1.0])
T_FP = 1e7
FULL = T_FP + 8.5e6 + 17_503_000.0  # t_fp + sum(t_dy) + sum(t_dw) of HAND


def hand_profile(with_layout: bool = True) -> TensorProfile:
    names = [h[0] for h in HAND]
    layout = [TensorLayout(name=h[0], stack="none", block=h[1], type=h[2]) for h in HAND] if with_layout else []
    return TensorProfile(
        names=names,
        t_fp=T_FP,
        t_dy=[h[3] for h in HAND],
        t_dw=[h[4] for h in HAND],
        reach=np.arange(len(HAND)),
        layout=layout,
    )


def cell(fig, row: str, col: str, attr: str = "z"):
    """The value of a heatmap cell addressed by its row and column labels."""
    trace = fig.data[0]
    return getattr(trace, attr)[list(trace.y).index(row)][list(trace.x).index(col)]


@pytest.fixture(scope="module")
def real_profiles(tiny_models):
    profiles = {}
    for name in ("tiny-opt", "tiny-t5"):
        model, _ = tiny_models(name)
        profiles[name] = profile_model(model, token_batch(model, batch_size=1, seq_len=16))
    return profiles


# ----------------------------------------------------------------------------------------------------------------
# format_flops


@pytest.mark.parametrize(
    "value, text",
    [(0, "0 FLOPs"), (512, "512 FLOPs"), (12.3e9, "12.3 GFLOPs"), (2.5e6, "2.5 MFLOPs"), (999.96e6, "1 GFLOPs"),
     (4.18e16, "41.8 PFLOPs"), (1.5e18, "1.5 EFLOPs")],
)  # fmt: skip
def test_format_flops(value, text):
    assert format_flops(value) == text


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_format_flops_rejects_non_counts(value):
    with pytest.raises(ValueError, match="FLOPs"):
        format_flops(value)


# ----------------------------------------------------------------------------------------------------------------
# selection_heatmap


def test_heatmap_grid_and_cells_on_hand_profile():
    fig = selection_heatmap(hand_profile(), HAND_MASK, HAND_IMPORTANCE)
    trace = fig.data[0]
    assert list(trace.y) == ["embeddings/head", "block 0", "block 1"]  # input at the bottom
    assert list(trace.x) == ["q.weight", "q.bias", "v.weight", "mlp_in.weight", "norm.weight", "embed.weight",
                             "lm_head.weight"]  # fmt: skip
    for (name, block, kind, _, _), selected in zip(HAND, HAND_MASK):
        row = "embeddings/head" if block is None else f"block {block}"
        assert cell(fig, row, kind) == float(selected)
        assert f"<b>{name}</b>" in cell(fig, row, kind, "text")
    assert cell(fig, "block 0", "q.weight") is None  # block 0 has no q.weight
    assert cell(fig, "block 0", "q.weight", "text") == ""
    assert sum(v is not None for row in trace.z for v in row) == len(HAND)
    assert "3 of 7 trained" in fig.layout.title.text


def test_heatmap_hover_lists_flag_importance_and_flops():
    fig = selection_heatmap(hand_profile(), HAND_MASK, HAND_IMPORTANCE)
    hover = cell(fig, "block 1", "mlp_in.weight", "text").split("<br>")
    assert hover == ["<b>b1.fc.weight</b>", "mlp_in.weight in block 1", "selected: yes", "importance: 2",
                     "t_dw: 8 MFLOPs", "t_dy: 3 MFLOPs"]  # fmt: skip
    hover = cell(fig, "block 1", "q.weight", "text").split("<br>")
    assert hover[2:] == ["selected: no", "importance: 0.001", "t_dw: 2.5 MFLOPs", "t_dy: 2 MFLOPs"]


def test_heatmap_hover_says_which_importances_the_probe_skipped():
    profile = hand_profile()
    scored = [name != "b1.q.weight" for name in profile.names]
    fig = selection_heatmap(profile, HAND_MASK, HAND_IMPORTANCE, scored=scored)
    assert "importance: not scored (out of rho's reach)" in cell(fig, "block 1", "q.weight", "text").split("<br>")
    assert "importance: 2" in cell(fig, "block 1", "mlp_in.weight", "text").split("<br>")


@pytest.mark.parametrize(
    "color_by, row, col, expected",
    [("importance", "block 0", "v.weight", 3.0), ("importance", "embeddings/head", "embed.weight", -1.0),
     ("t_dw", "embeddings/head", "norm.weight", 1e3), ("t_dy", "block 1", "q.bias", 5e5)],
)  # fmt: skip
def test_heatmap_color_by_shows_that_quantity(color_by, row, col, expected):
    fig = selection_heatmap(hand_profile(), importance=HAND_IMPORTANCE, color_by=color_by)
    assert cell(fig, row, col) == expected
    assert "selected:" not in cell(fig, row, col, "text")  # no mask given, so no flag claimed


def test_heatmap_rejects_bad_input():
    profile = hand_profile()
    with pytest.raises(ValueError, match="color_by"):
        selection_heatmap(profile, HAND_MASK, color_by="flops")
    with pytest.raises(ValueError, match="needs a mask"):
        selection_heatmap(profile)
    with pytest.raises(ValueError, match="needs importance"):
        selection_heatmap(profile, HAND_MASK, color_by="importance")
    with pytest.raises(ValueError, match="shape"):
        selection_heatmap(profile, HAND_MASK[:-1])
    with pytest.raises(ValueError, match="one value per tensor"):
        selection_heatmap(profile, HAND_MASK, HAND_IMPORTANCE[:3])
    with pytest.raises(ValueError, match="layout"):
        selection_heatmap(hand_profile(with_layout=False), HAND_MASK)
    clash = hand_profile()
    clash.layout[1] = TensorLayout(name="norm.weight", stack="none", block=None, type="lm_head.weight")
    with pytest.raises(ValueError, match="share the cell"):
        selection_heatmap(clash, HAND_MASK)


def test_heatmap_of_empty_profile_is_an_annotated_empty_figure():
    empty = TensorProfile(names=[], t_fp=1.0, t_dy=[], t_dw=[], reach=[])
    fig = selection_heatmap(empty, np.zeros(0, dtype=bool))
    assert not fig.data and "no trainable tensors" in fig.layout.annotations[0].text


@pytest.mark.parametrize(
    "name, rows",
    [("tiny-opt", ["embeddings/head", "block 0", "block 1", "block 2", "block 3"]),
     ("tiny-t5", ["embeddings/head", "enc 0", "enc 1", "enc (other)", "dec 0", "dec 1", "dec (other)"])],
)  # fmt: skip
def test_heatmap_on_real_profiles_shows_every_tensor_in_its_cell(real_profiles, name, rows):
    profile = real_profiles[name]
    importance = np.random.default_rng(0).normal(size=len(profile))
    mask = select_tensors(profile, importance, 0.5).mask
    fig = selection_heatmap(profile, mask, importance)
    dw = selection_heatmap(profile, color_by="t_dw")
    assert list(fig.data[0].y) == rows
    prefix = {"encoder": "enc", "decoder": "dec", "none": "block"}
    for k, lay in enumerate(profile.layout):
        if lay.block is not None:
            row = f"{prefix[lay.stack]} {lay.block}"
        else:
            row = "embeddings/head" if lay.stack == "none" else f"{prefix[lay.stack]} (other)"
        assert cell(fig, row, lay.type) == float(mask[k])
        assert cell(dw, row, lay.type) == profile.t_dw[k]
        assert f"<b>{lay.name}</b>" in cell(fig, row, lay.type, "text")
    assert sum(v is not None for r in fig.data[0].z for v in r) == len(profile)
    cols = list(fig.data[0].x)
    assert cols.index("q.weight") < cols.index("k.weight") < cols.index("v.weight") < cols.index("attn_out.weight")
    assert cols.index("attn_out.weight") < cols.index("mlp_in.weight") < cols.index("mlp_out.weight")
    assert cols.index("mlp_out.weight") < cols.index("attn_norm.weight") < cols.index("embed.weight")
    if name == "tiny-t5":
        assert cols.index("attn_out.weight") < cols.index("cross_q.weight") < cols.index("mlp_in.weight")


# ----------------------------------------------------------------------------------------------------------------
# flops_breakdown


def bars(fig) -> dict[str, tuple]:
    return {trace.name: tuple(trace.y) for trace in fig.data if trace.type == "bar"}


def test_breakdown_bars_equal_profile_arithmetic():
    fig = flops_breakdown(hand_profile(), HAND_MASK)
    labels = list(fig.data[0].x)
    assert labels[:2] == ["full fine-tuning", "this selection"]
    assert "LoRA" in labels[2] and "from the profile" in labels[2] and "no adapter FLOPs" in labels[2]
    b = bars(fig)
    # selection {0, 2, 4}: weight grads 4e6 + 8e6 + 2e3; activation grads t_dy[:4] = 1e6 + 0 + 3e6 + 2e6
    # LoRA: deepest q/v weight is index 5 (b0.v.weight), activation grads t_dy[:5] = 6.5e6
    assert b["forward"] == (T_FP, T_FP, T_FP)
    assert b["activation gradients"] == (8.5e6, 6e6, 6.5e6)
    assert b["weight gradients"] == (17_503_000.0, 12_002_000.0, 0.0)
    assert b["saved vs full"] == pytest.approx((0.0, FULL - (T_FP + 18_002_000.0), FULL - (T_FP + 6.5e6)))
    saved = next(t for t in fig.data if t.name == "saved vs full")
    assert saved.customdata[1][1] == pytest.approx((FULL - T_FP - 18_002_000.0) / FULL)  # hover: share of full
    assert saved.customdata[1][0] == format_flops(FULL - T_FP - 18_002_000.0)


def test_breakdown_with_measured_lora():
    fig = flops_breakdown(hand_profile(), HAND_MASK, lora_flops={"forward": 1.1e7, "backward": 7e6})
    assert list(fig.data[0].x)[2] == "LoRA (measured)"
    b = bars(fig)
    assert (b["forward"][2], b["activation gradients"][2], b["weight gradients"][2]) == (1.1e7, 7e6, 0.0)
    assert b["saved vs full"][2] == pytest.approx(FULL - 1.8e7)
    with pytest.raises(ValueError, match="backward"):
        flops_breakdown(hand_profile(), HAND_MASK, lora_flops={"forward": 1.0})


def test_breakdown_without_attention_tensors_has_no_lora_bar():
    profile = hand_profile()
    for k in (3, 5):
        profile.layout[k] = TensorLayout(profile.names[k], "none", HAND[k][1], "mlp_out.weight")
    assert list(flops_breakdown(profile, HAND_MASK).data[0].x) == ["full fine-tuning", "this selection"]


def test_breakdown_on_real_profile_matches_predicted_step(real_profiles):
    profile = real_profiles["tiny-opt"]
    mask = select_tensors(profile, np.random.default_rng(1).normal(size=len(profile)), 0.6).mask
    b = bars(flops_breakdown(profile, mask))
    full_bar = [b[p][0] for p in ("forward", "activation gradients", "weight gradients")]
    sel_bar = [b[p][1] for p in ("forward", "activation gradients", "weight gradients")]
    assert sum(full_bar) == pytest.approx(profile.full_flops)
    assert sum(sel_bar) == pytest.approx(profile.step_flops(mask))
    assert sel_bar[2] == pytest.approx(profile.t_dw[mask].sum())
    assert b["saved vs full"][1] == pytest.approx(profile.full_flops - profile.step_flops(mask))
    deepest_q = max(k for k, lay in enumerate(profile.layout) if lay.type == "q.weight")  # q of block 0
    assert b["activation gradients"][2] == pytest.approx(profile.t_dy[:deepest_q].sum())


# ----------------------------------------------------------------------------------------------------------------
# tradeoff_curve


def trace(fig, name: str):
    return next(t for t in fig.data if t.name == name)


def test_tradeoff_points_are_the_selectors_at_each_rho():
    profile = hand_profile()
    rhos = [1.0, 0.4, 0.6, 0.31]
    fig = tradeoff_curve(profile, HAND_IMPORTANCE, rhos=rhos, current_rho=0.6)
    predicted = trace(fig, "predicted step FLOPs / full")
    share = trace(fig, "selected importance / all positive")
    assert list(predicted.x) == sorted(rhos)
    positive = 0.5 + 2.0 + 1e-3 + 3.0
    for rho, ratio, s, count in zip(predicted.x, predicted.y, share.y, predicted.customdata):
        sel = select_tensors(profile, HAND_IMPORTANCE, rho)
        assert ratio == sel.predicted_ratio
        assert s == pytest.approx(sel.objective / positive)
        assert count == sel.mask.sum()
    assert share.y[-1] == pytest.approx(1.0)  # rho 1 affords every useful tensor
    assert [shape.x0 for shape in fig.layout.shapes] == [0.6]


def test_tradeoff_default_rhos_and_errors(real_profiles):
    profile = real_profiles["tiny-t5"]
    importance = np.random.default_rng(2).normal(size=len(profile))
    fig = tradeoff_curve(profile, importance)
    xs = trace(fig, "predicted step FLOPs / full").x
    assert len(xs) == 40 and xs[0] == pytest.approx(profile.min_training_rho) and xs[-1] == 1.0
    assert all(y <= x + 1e-9 for x, y in zip(xs, trace(fig, "predicted step FLOPs / full").y))
    with pytest.raises(ValueError, match="trains no tensor"):
        tradeoff_curve(profile, importance, rhos=[0.1, 0.5])
    with pytest.raises(ValueError, match="current_rho"):
        tradeoff_curve(profile, importance, rhos=[0.5], current_rho=1.5)
    with pytest.raises(ValueError, match="one value per tensor"):
        tradeoff_curve(profile, importance[:-1])


# ----------------------------------------------------------------------------------------------------------------
# loss_curves and flops_progress

RUNS = {
    "green 0.5": [
        {"type": "train", "step": 2, "epoch": 0.2, "loss": 2.5, "lr": 1e-4, "flops": 20.0, "flops_full": 40.0,
         "time": 1.0},
        {"type": "train", "step": 1, "epoch": 0.1, "loss": 3.0, "lr": 1e-4, "flops": 10.0, "flops_full": 20.0,
         "time": 0.5},
        {"type": "eval", "step": 2, "epoch": 0.2, "split": "validation", "loss": 2.8},
        {"type": "eval", "step": 2, "split": "test", "rouge1": 30.0, "rougeL": 25.0, "examples": []},
        {"type": "selection", "index": 0, "step": 0, "names": [], "mask": [], "importance": []},
    ],
    "full": [
        {"type": "train", "step": 1, "epoch": 0.1, "loss": 2.9, "lr": 1e-4, "flops": 20.0, "flops_full": 20.0,
         "time": 0.7},
    ],
}  # fmt: skip


def test_loss_curves_overlay_train_and_validation():
    fig = loss_curves(RUNS)
    train = trace(fig, "green 0.5 (train)")
    assert list(train.x) == [1, 2] and list(train.y) == [3.0, 2.5]  # sorted by step
    val = trace(fig, "green 0.5 (validation)")
    assert (list(val.x), list(val.y), val.mode) == ([2], [2.8], "markers")
    assert val.marker.color == train.line.color != trace(fig, "full (train)").line.color
    assert [t.name for t in fig.data] == ["green 0.5 (train)", "green 0.5 (validation)", "full (train)"]


def test_flops_progress_has_dashed_full_equivalent():
    fig = flops_progress(RUNS)
    measured, full = trace(fig, "green 0.5 (measured)"), trace(fig, "green 0.5 (full fine-tuning equivalent)")
    assert list(measured.y) == [10.0, 20.0] and list(full.y) == [20.0, 40.0] and list(full.x) == [1, 2]
    assert full.line.dash == "dash" and measured.line.color == full.line.color
    assert len(fig.data) == 4


def test_run_figures_on_empty_and_bad_input():
    for figure in (loss_curves, flops_progress):
        for runs in ({}, {"a": []}):
            fig = figure(runs)
            assert not fig.data and "yet" in fig.layout.annotations[0].text
        with pytest.raises(ValueError, match="map a run label"):
            figure([RUNS["full"]])
    with pytest.raises(ValueError, match="'loss'"):
        loss_curves({"a": [{"type": "train", "step": 1}]})
    with pytest.raises(ValueError, match="'flops_full'"):
        flops_progress({"a": [{"type": "train", "step": 1, "flops": 1.0}]})


# ----------------------------------------------------------------------------------------------------------------
# selection_timeline


def selection_records() -> list[dict]:
    names = [h[0] for h in HAND]
    masks = [HAND_MASK, ~HAND_MASK, np.ones(len(HAND), dtype=bool)]
    return [
        {"index": i, "step": 10 * i, "epoch": i / 10, "rho": 0.5, "names": names, "mask": m.tolist(),
         "importance": (HAND_IMPORTANCE * (i + 1)).tolist(), "predicted_ratio": 0.5, "objective": 1.0}
        for i, m in enumerate(masks)
    ][::-1]  # fmt: skip


def test_timeline_rows_are_reselections_and_cells_their_masks():
    records = selection_records()
    fig = selection_timeline(records)
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (3, len(HAND))
    assert list(heat.y) == ["#0 (step 0)", "#1 (step 10)", "#2 (step 20)"]
    by_index = {r["index"]: r for r in records}
    for i in range(3):
        assert list(heat.z[i]) == [float(x) for x in by_index[i]["mask"]]
    hover = heat.text[1][2].split("<br>")
    assert hover == ["<b>b1.fc.weight</b>", "re-selection 1 at step 10", "selected: no", "importance: 4"]


def test_timeline_groups_columns_by_block():
    fig = selection_timeline(selection_records(), layout=hand_profile().layout)
    axis = fig.layout.xaxis
    assert list(axis.ticktext) == ["embeddings/head", "block 1", "block 0", "embeddings/head"]
    assert list(axis.tickvals) == [0.5, 3.0, 5.0, 6.0]
    assert [shape.x0 for shape in fig.layout.shapes] == [1.5, 4.5, 5.5]


def test_timeline_empty_and_bad_input():
    assert "No selections" in selection_timeline([]).layout.annotations[0].text
    records = selection_records()
    records[1]["names"] = records[1]["names"][::-1]
    with pytest.raises(ValueError, match="different tensors"):
        selection_timeline(records)
    records = selection_records()
    records[0]["mask"] = records[0]["mask"][:-1]
    with pytest.raises(ValueError, match="mask entries"):
        selection_timeline(records)
    records = selection_records()
    del records[0]["importance"]
    with pytest.raises(ValueError, match="'importance'"):
        selection_timeline(records)
    with pytest.raises(ValueError, match="layout"):
        selection_timeline(selection_records(), layout=hand_profile().layout[::-1])


# ----------------------------------------------------------------------------------------------------------------
# pareto and comparison_rows


def summary(scheme, rho, flops, ratio, r1, r2, rl, seconds=100.0, **extra) -> dict:
    return {"scheme": scheme, "rho": rho, "steps": 10, "flops_total": flops, "flops_full_equivalent": flops / ratio,
            "flops_ratio": ratio, "flops_ratio_training": ratio, "rouge1": r1, "rouge2": r2, "rougeL": rl,
            "wall_seconds": seconds, "peak_memory_bytes": 0, "trainable_params": 1, **extra}  # fmt: skip


SUMMARIES = [
    summary("full", None, 100e12, 1.0, 32.9, 14.9, 27.1, seconds=42.0),
    summary("lora", None, 67e12, 0.67, 28.2, 12.1, 21.0, seconds=185.0),
    summary("green", 0.5, 50e12, 0.5, 30.5, 13.1, 25.2, seconds=3725.0, label="green-0.5"),
    summary("green", 0.7, 70e12, 0.7, 33.1, 15.2, 27.6),
    summary("green", 0.4, 40e12, 0.4, 28.6, 11.6, 23.5),
    summary("bias", None, 60e12, 0.6, None, None, None),
]


def test_pareto_points_and_front():
    fig = pareto(SUMMARIES)
    green = trace(fig, "green")
    assert list(green.x) == [50e12, 70e12, 40e12]
    assert list(green.y) == pytest.approx([25.2, 27.6, 23.5])
    assert list(green.text) == ["green-0.5", "green rho=0.7", "green rho=0.4"]
    assert [t.name for t in fig.data] == ["full", "lora", "green", "Pareto front"]  # unscored "bias" left out
    front = trace(fig, "Pareto front")
    assert list(front.x) == [40e12, 50e12, 70e12] and list(front.y) == pytest.approx([23.5, 25.2, 27.6])

    saved = pareto(SUMMARIES, x="savings")
    assert list(trace(saved, "green").x) == pytest.approx([50.0, 30.0, 60.0])
    assert list(trace(saved, "Pareto front").x) == pytest.approx([60.0, 50.0, 30.0])


def test_runs_without_flops_ratio():
    zero_shot = summary("zero-shot", None, 0.0, 1.0, 20.0, 8.0, 17.5) | {"flops_ratio": None, "steps": 0}
    fig = pareto(SUMMARIES + [zero_shot])
    point = trace(fig, "zero-shot")
    assert (list(point.x), list(point.y)) == ([0.0], [17.5]) and "(n/a saved)" in point.customdata[0][0]
    assert list(trace(fig, "Pareto front").x)[0] == 0.0
    assert "zero-shot" not in [t.name for t in pareto(SUMMARIES + [zero_shot], x="savings").data]
    assert comparison_rows([zero_shot])[0]["savings"] == "-"


def test_pareto_empty_and_bad_input():
    assert "No run" in pareto([]).layout.annotations[0].text
    assert "No run" in pareto([SUMMARIES[-1]]).layout.annotations[0].text
    with pytest.raises(ValueError, match="must be one of flops, savings, energy"):
        pareto(SUMMARIES, x="time")
    with pytest.raises(ValueError, match="in percent"):
        pareto([summary("full", None, 1e12, 1.0, 3290.0, 14.9, 271.0)])
    with pytest.raises(ValueError, match="'flops_total'"):
        pareto([{"scheme": "full", "rougeL": 0.2, "flops_ratio": 1.0}])


def test_comparison_rows_are_formatted_for_a_table():
    rows = comparison_rows(SUMMARIES)
    no_energy = {"energy": "-", "CO2": "-", "energy saved": "-"}  # these summaries have no energy record
    assert rows[0] == {"run": "full", "scheme": "full", "rho": "-", "FLOPs": "100 TFLOPs", "savings": "0.0%",
                       "time": "42.0 s", **no_energy, "ROUGE-1": "32.9", "ROUGE-2": "14.9", "ROUGE-L": "27.1"}  # fmt: skip
    assert rows[1]["time"] == "3 min 05 s" and rows[1]["savings"] == "33.0%"
    assert rows[2] == {"run": "green-0.5", "scheme": "green", "rho": "0.5", "FLOPs": "50 TFLOPs", "savings": "50.0%",
                       "time": "1 h 02 min", **no_energy, "ROUGE-1": "30.5", "ROUGE-2": "13.1",
                       "ROUGE-L": "25.2"}  # fmt: skip
    assert rows[5]["ROUGE-L"] == "-" and rows[5]["run"] == "bias"
    assert comparison_rows([]) == []
    with pytest.raises(ValueError, match="'wall_seconds'"):
        comparison_rows([{k: v for k, v in SUMMARIES[0].items() if k != "wall_seconds"}])


def test_prediction_check_points_and_diagonal():
    from greencore.plots import prediction_check

    fig = prediction_check([1.0, 2.0, 3.0], {"model": [1.1, 2.0, 2.9], "other": [0.5, -1.0, 4.0]}, ["a", "b", "c"],
                           log=True)
    diagonal, model, other = fig.data
    assert list(model.x) == [1.1, 2.0, 2.9] and list(model.y) == [1.0, 2.0, 3.0]
    assert list(other.text) == ["a", "c"]  # the non-positive prediction cannot sit on a log axis
    assert diagonal.x[0] == diagonal.y[0] == pytest.approx(0.5 / 1.5)
    with pytest.raises(ValueError, match="shape"):
        prediction_check([1.0], {"m": [1.0, 2.0]}, ["a"])


def test_figure_bundle_holds_what_the_default_renderers_show(monkeypatch):
    """Plotly JSON and CDN HTML always; a PNG image (GitHub's viewer) only when the renderers include "png"."""
    import base64
    import importlib.util
    import shutil

    import plotly.io as pio

    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout={"width": 300, "height": 200})
    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype+notebook_connected")
    bundle = plots.figure_bundle(fig)
    assert set(bundle) == {"application/vnd.plotly.v1+json", "text/html"}
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["y"] == [1, 2]
    assert "cdn.plot.ly" in bundle["text/html"]
    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype+notebook_connected+png")
    assert "image/png" not in plots.figure_bundle(fig, static=False)
    if importlib.util.find_spec("kaleido") is None or not (shutil.which("chromium") or shutil.which("chrome")):
        pytest.skip("static images need kaleido and a Chromium")
    image = base64.b64decode(plots.figure_bundle(fig)["image/png"])
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(image[16:20], "big") == 300 and int.from_bytes(image[20:24], "big") == 200


def test_budget_reach_against_hand_costs():
    profile = hand_profile()
    sizes = [10, 1, 40, 10, 1, 10, 50]
    # q.bias (position 4, block 1) alone costs its t_dw plus the t_dy of the four positions above it
    just_bias = (T_FP + 2e3 + 6e6) / FULL
    fig = plots.budget_reach(profile, sizes, rhos=[just_bias, 1.0], current_rho=0.9)
    reach, params = fig.data
    assert list(reach.y) == [0.5, 1.0]  # block 1 of the two, then both
    assert list(reach.customdata) == ["b1.q.bias", "embed.weight"]
    best = select_tensors(profile, np.array(sizes, dtype=float), just_bias)
    assert params.y[0] == pytest.approx(np.array(sizes)[best.mask].sum() / sum(sizes)) and params.y[1] == 1.0
    lines = sorted(shape.x0 for shape in fig.layout.shapes)
    assert lines == pytest.approx([(T_FP + 6.5e6) / FULL, 0.9])  # LoRA: activation gradients down to b0.v
    with pytest.raises(ValueError, match="sizes"):
        plots.budget_reach(profile, sizes[:-1])
