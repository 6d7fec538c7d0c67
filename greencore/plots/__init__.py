"""Plotly figures of profiles, selections and training runs, shared by the Gradio app and the notebooks.

Every function returns a `plotly.graph_objects.Figure` built offline (nothing is fetched); all use one template
and the same two colours for trained / frozen tensors (`style`). Empty inputs give an empty figure that says so;
malformed inputs raise ValueError.

    profiles.py  per-layer selection heatmap, FLOPs breakdown, rho trade-off, what a budget can reach (costs only),
                 re-selection timeline, prediction check
    runs.py      loss curves, FLOPs progress, the task's score (ROUGE-L, accuracy) against FLOPs or energy
    tables.py    FLOP counts, energy and CO2 as text, comparison table rows
    notebook.py  a figure as raw notebook outputs (redrawing in place, static images)
    style.py     the shared template, colours and input checks

Run records are the rows of `greencore.records` (`TrainRow`, `EvalRow`, `SelectionRow`, `Summary`); ROUGE scores are
in percent as `greencore.evaluate.rouge` gives them (None if not scored). To add a figure, write a function in the
module of its kind and list it here.
"""

from .notebook import figure_bundle
from .profiles import (budget_reach, flops_breakdown, prediction_check, selection_heatmap, selection_timeline,
                       tradeoff_curve)
from .runs import flops_progress, loss_curves, pareto
from .style import COLOR_BY
from .tables import comparison_rows, energy_tag, format_co2, format_energy, format_flops, score_columns

__all__ = [
    "COLOR_BY",
    "budget_reach",
    "comparison_rows",
    "energy_tag",
    "figure_bundle",
    "flops_breakdown",
    "flops_progress",
    "format_co2",
    "format_energy",
    "format_flops",
    "loss_curves",
    "pareto",
    "prediction_check",
    "score_columns",
    "selection_heatmap",
    "selection_timeline",
    "tradeoff_curve",
]
