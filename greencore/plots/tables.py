"""Text for tables: FLOP counts with units, and one row of display strings per run (CLI, app, notebooks)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .style import _field, _number

__all__ = ["comparison_rows", "format_flops"]

_FLOPS_UNITS = ("FLOPs", "kFLOPs", "MFLOPs", "GFLOPs", "TFLOPs", "PFLOPs", "EFLOPs", "ZFLOPs")


def format_flops(x: float) -> str:
    """A FLOP count with an SI unit and three significant digits, e.g. "12.3 GFLOPs"."""
    value = float(x)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"FLOPs must be a finite number >= 0, got {x!r}")
    exponent = 0
    while float(f"{value:.3g}") >= 1000 and exponent < len(_FLOPS_UNITS) - 1:
        value /= 1000
        exponent += 1
    return f"{value:.3g} {_FLOPS_UNITS[exponent]}"


def comparison_rows(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One table row of display strings per run: scheme, rho, FLOPs, savings, time and ROUGE-1/2/L ("-": none)."""
    rows = []
    for s in summaries:
        rho, savings = s.get("rho"), _savings(s)
        rouges = {key: _rouge(s, key) for key in ("rouge1", "rouge2", "rougeL")}
        rows.append(
            {
                "run": _run_label(s),
                "scheme": str(_field(s, "scheme", "summary")),
                "rho": "-" if rho is None else f"{rho:g}",
                "FLOPs": format_flops(_number(s, "flops_total", "summary")),
                "savings": "-" if savings is None else f"{savings:.1f}%",
                "time": _format_seconds(_number(s, "wall_seconds", "summary")),
                **{
                    label: "-" if rouges[key] is None else f"{rouges[key]:.1f}"
                    for label, key in (("ROUGE-1", "rouge1"), ("ROUGE-2", "rouge2"), ("ROUGE-L", "rougeL"))
                },
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


def _rouge(summary: Mapping[str, Any], key: str) -> float | None:
    """A ROUGE score in percent, or None when the run was not scored."""
    value = summary.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"summary {key!r} must be a ROUGE score in percent (0 to 100), got {value!r}")
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
