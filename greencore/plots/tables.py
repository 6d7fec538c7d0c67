"""Text for tables: FLOP counts with units, and one row of display strings per run (CLI, app, notebooks)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..tasks import get_task, task_of
from .style import _field, _number

__all__ = ["comparison_rows", "energy_tag", "format_co2", "format_energy", "format_flops", "score_columns"]

_FLOPS_UNITS = ("FLOPs", "kFLOPs", "MFLOPs", "GFLOPs", "TFLOPs", "PFLOPs", "EFLOPs", "ZFLOPs")


def format_flops(x: float) -> str:
    """A FLOP count with an SI unit and three significant digits, e.g. "12.3 GFLOPs"."""
    return _scaled(float(x), _FLOPS_UNITS)


def format_energy(kwh: float) -> str:
    """Energy with a unit and three significant digits: "2.83 mWh", "1.2 kWh"."""
    return _scaled(float(kwh) * 1e6, ("mWh", "Wh", "kWh", "MWh"))


def format_co2(kg: float) -> str:
    """A mass of CO2 with a unit and three significant digits: "1.34 mg", "4.1 g", "2 t"."""
    return _scaled(float(kg) * 1e6, ("mg", "g", "kg", "t"))


def energy_tag(energy: Mapping[str, Any]) -> str:
    """"measured", "estimated" or "partly measured", from a summary's `energy.method` (EnergyMeter.method)."""
    method = energy.get("method") or "estimated"
    if "measured:" in method and "estimated:" not in method:
        return "measured"
    return "partly measured" if "measured:" in method else "estimated"


def _scaled(value: float, units: tuple[str, ...]) -> str:
    """`value` in units[0], shown in the largest of `units` (each 1000 times the one before) that keeps it >= 1."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{units[0]} must be a finite number >= 0, got {value!r}")
    index = 0
    while float(f"{value:.3g}") >= 1000 and index < len(units) - 1:
        value /= 1000
        index += 1
    return f"{value:.3g} {units[index]}"


def score_columns(summaries: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(display name, summary key) of the scores of the runs' tasks: ROUGE-1/2/L for summarization, accuracy and
    macro-F1 with the majority class's for classification; both sets when the runs mix tasks (summarization's
    alone when there is no run)."""
    tasks = dict.fromkeys(task_of(s).name for s in summaries) or {"summarization": None}
    return [column for name in tasks for column in get_task(name).columns]


def comparison_rows(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One table row of display strings per run: scheme, rho, FLOPs, savings, time, training energy and CO2 (with
    their method), the energy saved against a full run of the same model, data and steps among `summaries`
    (measured; "no full run" when there is none to compare with) and the tasks' scores (`score_columns`; "-":
    none)."""
    from ..energy import energy_savings

    columns = score_columns(summaries)
    rows = []
    for s in summaries:
        rho, savings, energy = s.get("rho"), _savings(s), s.get("energy")
        saved = energy_savings(s, list(summaries))
        if not energy or s.get("scheme") == "full":
            saved_text = "-"
        else:
            saved_text = "no full run" if saved is None else f"{100 * saved:.1f}%"
        scores = {key: _score(s, key) for _, key in columns}
        rows.append(
            {
                "run": _run_label(s),
                "scheme": str(_field(s, "scheme", "summary")),
                "rho": "-" if rho is None else f"{rho:g}",
                "FLOPs": format_flops(_number(s, "flops_total", "summary")),
                "savings": "-" if savings is None else f"{savings:.1f}%",
                "time": _format_seconds(_number(s, "wall_seconds", "summary")),
                "energy": "-" if not energy else f"{format_energy(energy['training']['kwh'])} ({energy_tag(energy)})",
                "CO2": "-" if not energy else f"{format_co2(energy['training']['co2_kg'])} ({energy_tag(energy)})",
                "energy saved": saved_text,
                **{label: "-" if scores[key] is None else f"{scores[key]:.1f}" for label, key in columns},
            }
        )
    return rows


def _run_label(summary: Mapping[str, Any]) -> str:
    """A run's display name: its label or run name, else scheme and rho."""
    name = summary.get("label") or summary.get("run")
    if name:
        return str(name)
    rho = summary.get("rho")
    scheme = str(_field(summary, "scheme", "summary"))
    return scheme if rho is None else f"{scheme} rho={rho:g}"


def _score(summary: Mapping[str, Any], key: str) -> float | None:
    """A score in percent (ROUGE, accuracy, F1), or None when the run was not scored."""
    value = summary.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"summary {key!r} must be a score in percent (0 to 100), got {value!r}")
    return float(value)


def _savings(summary: Mapping[str, Any]) -> float | None:
    """FLOPs saved against full fine-tuning, in percent, or None before any step (no FLOPs ratio yet)."""
    if _field(summary, "flops_ratio", "summary") is None:
        return None
    return 100 * (1 - _number(summary, "flops_ratio", "summary"))


def _format_seconds(seconds: float) -> str:
    """Wall time as "42.0 s", "3 min 05 s" or "2 h 07 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
