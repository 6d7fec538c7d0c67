"""Figures of training runs: loss curves, FLOPs spent against full fine-tuning, and the task's score (ROUGE-L, or
accuracy) against FLOPs."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import plotly.graph_objects as go

from .style import RUN_COLORS, _empty_figure, _field, _figure, _number
from ..tasks import TASKS, get_task, task_of
from .tables import _run_label, _score, _savings, energy_tag, format_co2, format_energy, format_flops

__all__ = ["flops_progress", "loss_curves", "pareto"]

def loss_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> go.Figure:
    """Training loss against step for each run, overlaid, with validation losses as markers in the same colour.

    Eval lines without a loss (the ROUGE results of generation) and of other splits are not drawn.
    """
    title = "Loss"
    series = _run_series(runs)
    fig = _figure(title, height=440)
    for i, (label, lines) in enumerate(series.items()):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        train = [r for r in lines if r.get("type") == "train"]
        evals = [r for r in lines if r.get("type") == "eval" and r.get("split") == "validation" and "loss" in r]
        if train:
            fig.add_trace(
                go.Scatter(
                    x=[_field(r, "step", "train") for r in train],
                    y=[_field(r, "loss", "train") for r in train],
                    name=f"{label} (train)",
                    legendgroup=label,
                    mode="lines",
                    line={"color": color},
                )
            )
        if evals:
            fig.add_trace(
                go.Scatter(
                    x=[_field(r, "step", "eval") for r in evals],
                    y=[_field(r, "loss", "eval") for r in evals],
                    name=f"{label} (validation)",
                    legendgroup=label,
                    mode="markers",
                    marker={"color": color, "size": 9, "symbol": "diamond"},
                )
            )
    if not fig.data:
        return _empty_figure("No training or validation losses recorded yet.", title)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss")
    return fig


def flops_progress(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> go.Figure:
    """Cumulative measured FLOPs against step for each run, with its full fine-tuning equivalent dashed."""
    title = "Cumulative training FLOPs"
    series = _run_series(runs)
    fig = _figure(title, height=440)
    for i, (label, lines) in enumerate(series.items()):
        train = [r for r in lines if r.get("type") == "train"]
        if not train:
            continue
        color = RUN_COLORS[i % len(RUN_COLORS)]
        steps = [_field(r, "step", "train") for r in train]
        for key, name, dash in (("flops", "measured", "solid"), ("flops_full", "full fine-tuning equivalent", "dash")):
            ys = [_number(r, key, "train line") for r in train]
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=ys,
                    name=f"{label} ({name})",
                    legendgroup=label,
                    mode="lines",
                    line={"color": color, "dash": dash},
                    customdata=[format_flops(y) for y in ys],
                    hovertemplate=f"{label} ({name})<br>step %{{x}}: %{{customdata}}<extra></extra>",
                )
            )
    if not fig.data:
        return _empty_figure("No training steps recorded yet.", title)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="cumulative FLOPs", tickformat="~s")
    return fig


class _RunPoint(NamedTuple):
    scheme: str
    label: str
    x: float  # the cost the x axis shows
    score: float
    hover: str


_PARETO_X = {
    "flops": ("against training FLOPs", "training FLOPs (measured, incl. selection)"),
    "savings": ("against FLOPs saved", "FLOPs saved vs full fine-tuning (%)"),
    "energy": ("against training energy", "training energy (kWh, incl. selection; {method})"),
}


def pareto(summaries: Sequence[Mapping[str, Any]], x: str = "flops", metric: str | None = None) -> go.Figure:
    """The runs' score against training FLOPs (`x="flops"`), FLOPs saved (`x="savings"`) or training energy
    (`x="energy"`, codecarbon's figure, its method on the axis), one point per run.

    The score is `metric` (a summary key such as "rougeL" or "accuracy"), by default the headline of the first
    run's task (`Task.headline`: ROUGE-L for summarization, accuracy for classification). Points are coloured by
    scheme and labelled by run; runs without that score (another task's, or not scored) or without the x axis'
    figure (a FLOPs ratio, an energy record) are left out. The dashed line joins the runs no other run beats on both
    axes.
    """
    if x not in _PARETO_X:
        raise ValueError(f"x={x!r} must be one of {', '.join(_PARETO_X)}")
    task = task_of(summaries[0]) if summaries else get_task("summarization")
    metric = metric or task.headline
    name = {key: label for cls in TASKS.values() for label, key in cls.columns}.get(metric, metric)
    title, axis = f"{name} {_PARETO_X[x][0]}", _PARETO_X[x][1]
    points, methods = [], set()
    for s in summaries:
        score, savings, energy = _score(s, metric), _savings(s), s.get("energy")
        if score is None or (x == "savings" and savings is None) or (x == "energy" and not energy):
            continue
        flops = _number(s, "flops_total", "summary")
        hover = f"{format_flops(flops)} ({'n/a' if savings is None else f'{savings:.1f}%'} saved)"
        if energy:
            hover += f"<br>{format_energy(energy['training']['kwh'])}, {format_co2(energy['training']['co2_kg'])} CO2 " \
                     f"({energy_tag(energy)})"
            methods.add(energy_tag(energy))
        cost = {"flops": flops, "savings": savings, "energy": energy["training"]["kwh"] if energy else None}[x]
        points.append(_RunPoint(str(_field(s, "scheme", "summary")), _run_label(s), cost, score, hover))
    if not points:
        return _empty_figure(f"No run with a {name} score yet." if x != "energy"
                             else f"No run with a {name} score and an energy record yet.", title)

    fig = _figure(title, height=480)
    schemes = list(dict.fromkeys(p.scheme for p in points))
    for i, scheme in enumerate(schemes):
        mine = [p for p in points if p.scheme == scheme]
        fig.add_trace(
            go.Scatter(
                x=[p.x for p in mine],
                y=[p.score for p in mine],
                name=scheme,
                mode="markers+text",
                text=[p.label for p in mine],
                textposition="top center",
                marker={"size": 11, "color": RUN_COLORS[i % len(RUN_COLORS)]},
                customdata=[[p.hover] for p in mine],
                hovertemplate="%{text}<br>%{customdata[0]}<br>" + name + " %{y:.1f}<extra></extra>",
            )
        )
    # Lower FLOPs or energy, or higher savings, is better: the front is computed on the cost the x axis shows.
    sign = -1.0 if x == "savings" else 1.0
    front = _pareto_front([(sign * p.x, p.score) for p in points])
    fig.add_trace(
        go.Scatter(
            x=[sign * cost for cost, _ in front],
            y=[score for _, score in front],
            name="Pareto front",
            mode="lines",
            line={"dash": "dash", "color": "#7f7f7f"},
            hoverinfo="skip",
        )
    )
    fig.update_xaxes(title_text=axis.format(method=", ".join(sorted(methods))),
                     tickformat="~s" if x == "flops" else None)
    fig.update_yaxes(title_text=name)
    return fig


def _run_series(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, list[Mapping[str, Any]]]:
    """Each run's metrics lines sorted by step (lines of other types are kept; callers filter by type)."""
    if not isinstance(runs, Mapping):
        raise ValueError(f"runs must map a run label to its metrics lines, got {type(runs).__name__}")
    series = {}
    for label, lines in runs.items():
        for line in lines:
            _field(line, "type", f"metrics line of run {label!r}")
        series[str(label)] = sorted(lines, key=lambda r: (r.get("step", 0), r["type"] != "train"))
    return series


def _pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(cost, score) points that no other point beats (no higher cost and a higher score), by increasing cost."""
    front: list[tuple[float, float]] = []
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((cost, score))
    return front
