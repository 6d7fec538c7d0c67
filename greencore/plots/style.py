"""The look every figure shares (template, trained/frozen colours, empty figures) and the checks of their inputs."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import plotly.colors
import plotly.graph_objects as go

__all__ = ["COLOR_BY", "FROZEN_COLOR", "RUN_COLORS", "TEMPLATE", "TRAINED_COLOR"]

TEMPLATE = "plotly_white"


TRAINED_COLOR = "#2ca02c"


FROZEN_COLOR = "#dcdcdc"


RUN_COLORS = plotly.colors.qualitative.Plotly


COLOR_BY = ("selected", "importance", "t_dw", "t_dy")


_SELECTED_SCALE = [[0.0, FROZEN_COLOR], [1.0, TRAINED_COLOR]]


_SELECTED_COLORBAR = {"tickvals": [0, 1], "ticktext": ["frozen", "trained"]}


def _figure(title: str, height: int, **layout: Any) -> go.Figure:
    """An empty figure with the shared template, title and legend placement."""
    fig = go.Figure()
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title},
        height=height,
        margin={"l": 70, "r": 30, "t": 60, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        **layout,
    )
    return fig


def _empty_figure(message: str, title: str | None) -> go.Figure:
    """A figure with no data that says why, so a UI can show it instead of failing."""
    fig = _figure(title or "", height=300)
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 15})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _per_tensor(values: Any, n: int, what: str) -> np.ndarray:
    """A finite float vector with one entry per tensor."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{what} must have one value per tensor ({n}), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or inf")
    return arr


def _field(record: Mapping[str, Any], key: str, what: str) -> Any:
    """record[key], with a clear error naming the kind of record when it is missing."""
    if not isinstance(record, Mapping):
        raise ValueError(f"each {what} record must be a dict, got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{what} record has no {key!r} (it has {', '.join(map(str, record))})")
    return record[key]


def _number(record: Mapping[str, Any], key: str, what: str) -> float:
    """record[key] as a float, checked to be a finite number >= 0 (FLOPs, ratios, durations)."""
    value = _field(record, key, what)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} {key!r} must be a finite number >= 0, got {value!r}")
    return float(value)
