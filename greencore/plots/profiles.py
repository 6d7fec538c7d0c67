"""Figures of profiles and selections: the per-layer heatmap, a step's FLOPs breakdown, the rho trade-off, the
re-selection timeline and predicted-against-measured checks."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from ..layout import TensorLayout
from ..profile import TensorProfile
from ..select import select_tensors
from .style import (COLOR_BY, RUN_COLORS, TRAINED_COLOR, _SELECTED_COLORBAR, _SELECTED_SCALE, _empty_figure, _field,
                    _figure, _number, _per_tensor)
from .tables import format_flops

__all__ = ["budget_reach", "flops_breakdown", "prediction_check", "selection_heatmap", "selection_timeline",
           "tradeoff_curve"]

# Heatmap column order: attention, cross-attention, MLP, norms, then embeddings and head; unknown types follow.
_TYPE_ORDER = [
    "q", "k", "v", "qkv", "rel_pos", "attn_out",
    "cross_q", "cross_k", "cross_v", "cross_kv", "cross_qkv", "cross_out",
    "mlp_gate", "mlp_in", "mlp_out",
    "attn_norm", "cross_norm", "mlp_norm", "embed_norm", "norm", "head_norm",
    "embed", "pos_embed", "type_embed", "head_transform", "lm_head",
]  # fmt: skip


_PARAM_ORDER = {"weight": 0, "bias": 1}


# Tensors LoRA adapts in the reference configuration (r=8 on the attention query and value projections).
_LORA_TARGETS = {(base, "weight") for base in ("q", "v", "qkv", "cross_q", "cross_v", "cross_kv", "cross_qkv")}


def selection_heatmap(
    profile: TensorProfile,
    mask: Any = None,
    importance: Any = None,
    color_by: str = "selected",
    title: str | None = None,
    scored: Any = None,
) -> go.Figure:
    """Per-layer grid of the model's tensors: rows are blocks (input at the bottom), columns canonical tensor types.

    Cells are coloured by `color_by`: "selected" (needs `mask`), "importance" (needs `importance`), "t_dw" or
    "t_dy"; a block without a tensor of some type leaves that cell empty. Hover shows each tensor's name, flag,
    importance and FLOPs; with `scored` (a selection record's mask of computed importances) a tensor whose score
    the probe skipped, out of rho's reach, says so instead of showing its placeholder 0. Tensors outside blocks share
    one row ("embeddings/head", or "enc/dec (other)" for the final norms of an encoder-decoder's stacks).
    """
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by={color_by!r} is not one of {', '.join(COLOR_BY)}")
    n = len(profile)
    m = None if mask is None else profile.as_mask(mask)
    imp = None if importance is None else _per_tensor(importance, n, "importance")
    computed = np.ones(n, dtype=bool) if scored is None else profile.as_mask(scored)
    if color_by == "selected" and m is None:
        raise ValueError("color_by='selected' needs a mask (one bool per profiled tensor, or the trained names)")
    if color_by == "importance" and imp is None:
        raise ValueError("color_by='importance' needs importance (one value per profiled tensor)")
    if n == 0:
        return _empty_figure("The profile has no trainable tensors.", title)
    layout = _checked_layout(profile.layout, profile.names)

    values = {"selected": m, "importance": imp, "t_dw": profile.t_dw, "t_dy": profile.t_dy}[color_by]
    rows = _row_labels(layout)
    row_order = sorted(set(rows), key=lambda label: _row_key(layout[rows.index(label)]))
    col_order = sorted({lay.type for lay in layout}, key=_type_key)
    z: list[list[float | None]] = [[None] * len(col_order) for _ in row_order]
    text = [[""] * len(col_order) for _ in row_order]
    for k, lay in enumerate(layout):
        r, c = row_order.index(rows[k]), col_order.index(lay.type)
        if z[r][c] is not None:
            raise ValueError(f"two tensors share the cell ({rows[k]}, {lay.type}); the layout must not repeat a type")
        z[r][c] = float(values[k])
        hover = [f"<b>{lay.name}</b>", f"{lay.type} in {rows[k]}"]
        if m is not None:
            hover.append(f"selected: {'yes' if m[k] else 'no'}")
        if imp is not None:
            hover.append(f"importance: {imp[k]:.3g}" if computed[k] else "importance: not scored (out of rho's reach)")
        hover += [f"t_dw: {format_flops(profile.t_dw[k])}", f"t_dy: {format_flops(profile.t_dy[k])}"]
        text[r][c] = "<br>".join(hover)

    style: dict[str, Any]
    if color_by == "selected":
        style = {"colorscale": _SELECTED_SCALE, "zmin": 0, "zmax": 1, "colorbar": _SELECTED_COLORBAR}
        default_title = f"Selected tensors ({int(m.sum())} of {n} trained)"
    elif color_by == "importance":
        style = {"colorscale": "RdBu", "zmid": 0, "colorbar": {"title": {"text": "importance"}}}
        default_title = "Importance per tensor"
    else:
        style = {"colorscale": "Viridis", "colorbar": {"title": {"text": "FLOPs"}, "tickformat": "~s"}}
        default_title = {"t_dw": "Weight-gradient FLOPs (t_dw)", "t_dy": "Activation-gradient FLOPs (t_dy)"}[color_by]

    fig = _figure(title or default_title, height=max(320, 160 + 26 * len(row_order)))
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=col_order,
            y=row_order,
            text=text,
            hovertemplate="%{text}<extra></extra>",
            hoverongaps=False,
            xgap=1,
            ygap=1,
            **style,
        )
    )
    fig.update_xaxes(title_text="tensor type", tickangle=-45, type="category")
    fig.update_yaxes(title_text="block (input at the bottom)", type="category")
    return fig


def flops_breakdown(
    profile: TensorProfile, mask: Any, lora_flops: Mapping[str, float] | None = None
) -> go.Figure:
    """Stacked FLOPs of one training step for full fine-tuning, this selection and LoRA, with what each saves.

    The selection's backward is `profile.backward_flops(mask)`: its weight-gradient part is `sum(t_dw[mask])`, the
    rest is activation gradients. `lora_flops` ({"forward", "backward"}) is a caller's measurement; its backward is
    drawn as activation gradients, the adapters' own weight gradients being a negligible part of it. Without it a
    reference is computed from the profile: forward, plus activation gradients down to the deepest attention
    query/value tensor, no weight gradients and no adapter FLOPs; the bar is left out if the profile has no such
    tensor.
    """
    m = profile.as_mask(mask)
    full = profile.full_flops
    if len(profile) == 0 or full <= 0:
        return _empty_figure("The profile has no trainable tensors.", "FLOPs of one training step")
    weight = float(profile.t_dw[m].sum())
    bars = {
        "full fine-tuning": (profile.t_fp, float(profile.t_dy.sum()), float(profile.t_dw.sum())),
        "this selection": (profile.t_fp, max(0.0, profile.backward_flops(m) - weight), weight),
    }
    if lora_flops is not None:
        forward, backward = (_number(lora_flops, key, "lora_flops") for key in ("forward", "backward"))
        bars["LoRA (measured)"] = (forward, backward, 0.0)
    else:
        reference = _lora_reference(profile)
        if reference is not None:
            label = "LoRA q/v (reference:<br>from the profile,<br>no adapter FLOPs)"
            bars[label] = (profile.t_fp, reference - profile.t_fp, 0.0)

    labels = list(bars)
    parts = {
        "forward": [b[0] for b in bars.values()],
        "activation gradients": [b[1] for b in bars.values()],
        "weight gradients": [b[2] for b in bars.values()],
        "saved vs full": [max(0.0, full - sum(b)) for b in bars.values()],
    }
    markers = {
        "forward": {"color": "#7f7f7f"},
        "activation gradients": {"color": "#1f77b4"},
        "weight gradients": {"color": "#ff7f0e"},
        "saved vs full": {"color": "rgba(44, 160, 44, 0.2)", "pattern": {"shape": "/", "fgcolor": TRAINED_COLOR}},
    }
    fig = _figure("FLOPs of one training step", height=440, barmode="stack")
    for part, ys in parts.items():
        fig.add_trace(
            go.Bar(
                name=part,
                x=labels,
                y=ys,
                marker=markers[part],
                customdata=[[format_flops(y), y / full] for y in ys],
                hovertemplate=f"{part}: %{{customdata[0]}} (%{{customdata[1]:.1%}} of full)<extra>%{{x}}</extra>",
            )
        )
    totals = [sum(b) for b in bars.values()]
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=totals,
            mode="text",
            text=[f"{t / full:.0%} of full" for t in totals],
            textposition="top center",
            showlegend=False,
            hoverinfo="skip",
        )
    )
    fig.update_yaxes(title_text="FLOPs per step", tickformat="~s")
    return fig


def tradeoff_curve(
    profile: TensorProfile,
    importance: Any,
    rhos: Sequence[float] | None = None,
    current_rho: float | None = None,
) -> go.Figure:
    """Predicted step-FLOPs ratio and selected importance against rho, from `select_tensors` at each rho.

    Importance is shown as a share of the total positive importance (what training every useful tensor gets).
    `rhos` defaults to 40 values from `profile.min_training_rho` (the smallest that trains a tensor) to 1; `current_rho` is marked by a vertical line.
    """
    imp = _per_tensor(importance, len(profile), "importance")
    if len(profile) == 0:
        return _empty_figure("The profile has no trainable tensors.", "FLOPs and importance against rho")
    grid = _rho_grid(profile, rhos)
    selections = [select_tensors(profile, imp, float(rho)) for rho in grid]
    positive = float(imp[imp > 0].sum())
    share = [s.objective / positive if positive > 0 else 0.0 for s in selections]
    counts = [int(s.mask.sum()) for s in selections]

    fig = _figure("FLOPs and importance against rho", height=440)
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=grid,
            name="budget (rho)",
            mode="lines",
            line={"dash": "dot", "color": "#7f7f7f"},
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=[s.predicted_ratio for s in selections],
            name="predicted step FLOPs / full",
            mode="lines+markers",
            customdata=counts,
            hovertemplate="rho %{x:.3f}: step FLOPs %{y:.1%} of full, %{customdata} tensors<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=share,
            name="selected importance / all positive",
            mode="lines+markers",
            line={"color": TRAINED_COLOR},
            hovertemplate="rho %{x:.3f}: %{y:.1%} of the positive importance<extra></extra>",
        )
    )
    return _against_rho(fig, current_rho)


def budget_reach(
    profile: TensorProfile,
    sizes: Sequence[int],
    rhos: Sequence[float] | None = None,
    current_rho: float | None = None,
) -> go.Figure:
    """What each rho can reach, from costs alone (no importance needed, so also for a model without weights).

    Against rho: the share of the network's blocks the backward pass can reach (the deepest tensor that fits the
    budget trained alone, and every block nearer the loss), and the largest share of the parameters any selection
    can train (the exact selector with each tensor worth its parameter count, `sizes`, aligned with
    `profile.names`). LoRA's step is marked for reference: its adapters sit in every block, so it pays the
    activation gradient down to the first block whatever its rank. `rhos` defaults to 40 values from
    `profile.min_training_rho` to 1.
    """
    title = "What a budget can reach (costs only)"
    size = _per_tensor(sizes, len(profile), "sizes")
    if len(profile) == 0:
        return _empty_figure("The profile has no trainable tensors.", title)
    layout = _checked_layout(profile.layout, profile.names)
    grid = _rho_grid(profile, rhos)
    blocks = [None if lay.block is None else (lay.stack, lay.block) for lay in layout]
    all_blocks = {b for b in blocks if b is not None}
    depth, depth_text, trainable = [], [], []
    for rho in grid:
        deepest = profile.deepest_trainable(float(rho))
        reached = {b for b in blocks[: deepest + 1] if b is not None}
        depth.append(len(reached) / len(all_blocks) if all_blocks else float(deepest + 1) / len(profile))
        depth_text.append(profile.names[deepest] if deepest >= 0 else "nothing")
        selection = select_tensors(profile, size, float(rho))
        trainable.append(float(size[selection.mask].sum() / size.sum()) if size.sum() > 0 else 0.0)

    fig = _figure(title, height=440)
    fig.add_trace(go.Scatter(x=grid, y=depth, name="blocks backprop can reach", mode="lines+markers",
                             customdata=depth_text,
                             hovertemplate="rho %{x:.3f}: %{y:.0%} of the blocks (deepest: %{customdata})"
                                           "<extra></extra>"))
    fig.add_trace(go.Scatter(x=grid, y=trainable, name="most parameters trainable", mode="lines+markers",
                             line={"color": TRAINED_COLOR},
                             hovertemplate="rho %{x:.3f}: at most %{y:.1%} of the parameters<extra></extra>"))
    lora = _lora_reference(profile)
    if lora is not None:
        fig.add_vline(x=lora / profile.full_flops, line_dash="dot", line_color="#7f7f7f",
                      annotation_text=f"LoRA q/v: {lora / profile.full_flops:.0%} at any rank",
                      annotation_position="bottom right")
    return _against_rho(fig, current_rho)


def _rho_grid(profile: TensorProfile, rhos: Sequence[float] | None) -> np.ndarray:
    """The rho values of a curve: `rhos` sorted, or 40 from the smallest that trains a tensor to 1."""
    grid = np.linspace(profile.min_training_rho, 1.0, 40) if rhos is None else np.sort(np.asarray(rhos, dtype=np.float64))
    if grid.ndim != 1 or len(grid) == 0:
        raise ValueError("rhos must be a non-empty sequence of numbers")
    return grid


def _against_rho(fig: go.Figure, current_rho: float | None) -> go.Figure:
    """The axes of a curve against rho (fractions), with `current_rho` marked by a dashed line."""
    if current_rho is not None:
        if not math.isfinite(current_rho) or not 0 < current_rho <= 1:
            raise ValueError(f"current_rho={current_rho!r} must be a fraction in (0, 1]")
        fig.add_vline(x=current_rho, line_dash="dash", annotation_text=f"rho = {current_rho:.2f}")
    fig.update_xaxes(title_text="rho (FLOPs budget as a fraction of full fine-tuning)")
    fig.update_yaxes(title_text="fraction", tickformat=".0%", range=[0, 1.05])
    return fig


def selection_timeline(
    selections: Sequence[Mapping[str, Any]], layout: Sequence[TensorLayout] | None = None
) -> go.Figure:
    """Which tensors each re-selection trained: rows are re-selections (first at the top), columns tensors.

    Columns follow the selections' `names` (backprop order, 0 nearest the loss). With `layout` (aligned with
    those names, e.g. `profile.layout`) the columns are labelled and separated by block.
    """
    title = "Selected tensors at each re-selection"
    if not selections:
        return _empty_figure("No selections recorded yet.", title)
    records = sorted(selections, key=lambda s: _field(s, "index", "selection"))
    names = list(_field(records[0], "names", "selection"))
    n = len(names)
    z, text, rows = [], [], []
    for rec in records:
        if list(_field(rec, "names", "selection")) != names:
            raise ValueError(f"selection {rec['index']} lists different tensors than selection {records[0]['index']}")
        mask = [bool(x) for x in _field(rec, "mask", "selection")]
        imp = _per_tensor(_field(rec, "importance", "selection"), n, f"importance of selection {rec['index']}")
        if len(mask) != n:
            raise ValueError(f"selection {rec['index']} has {len(mask)} mask entries for {n} tensors")
        step = _field(rec, "step", "selection")
        rows.append(f"#{rec['index']} (step {step})")
        z.append([float(x) for x in mask])
        text.append(
            [
                f"<b>{name}</b><br>re-selection {rec['index']} at step {step}<br>"
                f"selected: {'yes' if sel else 'no'}<br>importance: {i:.3g}"
                for name, sel, i in zip(names, mask, imp)
            ]
        )

    fig = _figure(title, height=max(280, 160 + 22 * len(rows)))
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=list(range(n)),
            y=rows,
            text=text,
            hovertemplate="%{text}<extra></extra>",
            colorscale=_SELECTED_SCALE,
            zmin=0,
            zmax=1,
            colorbar=_SELECTED_COLORBAR,
            ygap=1,
        )
    )
    fig.update_yaxes(type="category", autorange="reversed", title_text="re-selection")
    if layout is None:
        fig.update_xaxes(title_text="tensor (backprop order, 0 = nearest the loss)")
        return fig
    labels = _row_labels(_checked_layout(layout, names))
    starts = [k for k in range(n) if k == 0 or labels[k] != labels[k - 1]]
    ends = starts[1:] + [n]
    fig.update_xaxes(
        title_text="tensor by block (backprop order: output side on the left)",
        tickvals=[(a + b - 1) / 2 for a, b in zip(starts, ends)],
        ticktext=[labels[a] for a in starts],
        tickangle=-45,
    )
    for boundary in starts[1:]:
        fig.add_vline(x=boundary - 0.5, line_width=1, line_color="white")
    return fig


def prediction_check(measured: Sequence[float], predictions: Mapping[str, Sequence[float]], labels: Sequence[Any], *,
                     title: str = "Predicted against measured", x_title: str = "predicted",
                     y_title: str = "measured", log: bool = False, tickformat: str | None = None) -> go.Figure:
    """Each series of `predictions` against `measured`, one point per labelled item, and the diagonal where a
    prediction is exact. With `log`, both axes are logarithmic and items with a value <= 0 are left out."""
    y = np.asarray(measured, dtype=np.float64)
    names = [str(label) for label in labels]
    if y.ndim != 1 or len(y) != len(names):
        raise ValueError(f"measured must have one value per label ({len(names)}), got shape {y.shape}")
    series = {}
    for name, values in predictions.items():
        x = np.asarray(values, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"prediction {name!r} has shape {x.shape}, expected {y.shape}")
        keep = np.isfinite(x) & np.isfinite(y)
        series[name] = (x, keep & (x > 0) & (y > 0) if log else keep)
    shown = [v for x, keep in series.values() for v in (*x[keep], *y[keep])]
    if not shown:
        return _empty_figure("Nothing to compare yet.", title)
    fig = _figure(title, height=480)
    lo, hi = min(shown), max(shown)
    lo, hi = (lo / 1.5, hi * 1.5) if log else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="prediction = measurement",
                             line={"dash": "dot", "color": "#7f7f7f"}, hoverinfo="skip"))
    colors = [TRAINED_COLOR, *RUN_COLORS]
    for i, (name, (x, keep)) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=x[keep], y=y[keep], mode="markers", name=name,
                                 text=[n for n, k in zip(names, keep) if k],
                                 marker={"size": 10 if i == 0 else 13, "color": colors[i % len(colors)],
                                         "symbol": "circle" if i == 0 else "circle-open"},
                                 hovertemplate=f"%{{text}}<br>{name}: %{{x:.4g}}<br>measured: %{{y:.4g}}<extra></extra>"))
    axis = {"type": "log"} if log else ({"tickformat": tickformat} if tickformat else {})
    fig.update_xaxes(title_text=x_title, **axis)
    fig.update_yaxes(title_text=y_title, **axis)
    return fig


def _checked_layout(layout: Sequence[TensorLayout], names: Sequence[str]) -> list[TensorLayout]:
    """The layout, checked to describe exactly `names` in order (the per-layer figures need it)."""
    if [lay.name for lay in layout] != list(names):
        raise ValueError(
            "the layout must list the profile's tensors in the same order (build the profile with profile_model, "
            "or pass TensorProfile(layout=tensor_layout(model, names)))"
        )
    return list(layout)


def _row_labels(layout: Sequence[TensorLayout]) -> list[str]:
    """Heatmap row of each tensor: its block ("block 3", or "enc 0" / "dec 1" for seq2seq) or its outer group."""
    seq2seq = any(lay.stack != "none" for lay in layout)
    prefix = {"encoder": "enc", "decoder": "dec", "none": "block"}
    labels = []
    for lay in layout:
        if lay.block is not None:
            labels.append(f"{prefix.get(lay.stack, lay.stack)} {lay.block}")
        elif seq2seq and lay.stack != "none":
            labels.append(f"{prefix.get(lay.stack, lay.stack)} (other)")
        else:
            labels.append("embeddings/head")
    return labels


def _row_key(lay: TensorLayout) -> tuple[int, int, float]:
    """Input-to-output order of rows: embeddings/head, then each stack's blocks, then that stack's outer tensors."""
    stack_rank = {"none": 0, "encoder": 1, "decoder": 2}.get(lay.stack, 3)
    outer_first = lay.stack == "none" and lay.block is None
    return stack_rank, 0 if outer_first else 1, math.inf if lay.block is None else lay.block


def _split_type(kind: str) -> tuple[str, str, int]:
    """("q", "weight", 1) from "q.weight"; ("q", "weight", 2) from "q.weight#2"; ("scale", "", 1) from "scale"."""
    body, _, dup = kind.partition("#")
    base, _, param = body.rpartition(".") if "." in body else (body, "", "")
    return base, param, int(dup) if dup.isdigit() else 1


def _type_key(kind: str) -> tuple[int, str, int, str, int]:
    base, param, dup = _split_type(kind)
    rank = _TYPE_ORDER.index(base) if base in _TYPE_ORDER else len(_TYPE_ORDER)
    return rank, base, _PARAM_ORDER.get(param, len(_PARAM_ORDER)), param, dup


def _lora_reference(profile: TensorProfile) -> float | None:
    """Step FLOPs of LoRA on the attention query/value weights, from the profile: the forward pass plus the
    activation gradients down to the deepest of them, no weight gradients and no adapter FLOPs (None without
    such tensors)."""
    targets = [k for k, lay in enumerate(profile.layout) if _split_type(lay.type)[:2] in _LORA_TARGETS]
    return float(profile.t_fp + profile.t_dy[: max(targets)].sum()) if targets else None
