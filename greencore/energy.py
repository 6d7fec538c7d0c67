"""Energy and CO2 of a run, from codecarbon's offline tracker: nothing is sent anywhere, ever.

`EnergyMeter` holds one `codecarbon.OfflineEmissionsTracker` per process, tracking this process alone (so under
torchrun each rank reports its own share and the ranks sum). The tracker's running time is cut into phases: `cut(phase)`
books everything since the previous cut to "training" (steps, selections, checkpoints), "evaluation" (validation,
generation, ROUGE) or "accounting" (measuring once per batch shape what full fine-tuning would spend, which is
neither scheme's cost), so no second is counted twice or left out.

Whether a figure is measured or estimated depends on the machine, and `method` says which: codecarbon measures NVIDIA
GPUs through NVML and CPUs through RAPL where the counters are readable; otherwise it estimates CPU power from the
processor's TDP and this process's load, and RAM power always from its size. CO2 is energy times the grid's carbon
intensity: the one given (`grid_intensity`, g CO2 per kWh), codecarbon's bundled data for `country` (ISO 3166-1
alpha-3), or its world average.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["EnergyMeter", "PHASES", "carbon_intensity", "check_country", "energy_savings"]

PHASES = ("training", "evaluation", "accounting")
_MEASURED = {"intel_rapl": "rapl", "windows_emi": "windows emi", "intel_power_gadget": "intel power gadget",
             "apple_powermetrics": "powermetrics"}


def check_country(code: str) -> str:
    """An ISO 3166-1 alpha-3 code codecarbon has grid data for (upper-cased); ValueError naming the problem."""
    from codecarbon.input import DataSource

    code = code.strip().upper()
    known = DataSource().get_global_energy_mix_data()
    if code not in known:
        raise ValueError(f"--country {code!r}: codecarbon has no grid data for it; give an ISO 3166-1 alpha-3 code "
                         f"such as FRA, DEU, USA or IND ({len(known)} are known), or --grid-intensity in g CO2/kWh")
    return code


@dataclass
class EnergyMeter:
    """Energy (kWh) and CO2 (kg) of this process, per phase; `enabled=False` measures nothing and reports None.

    `tracker_options` go to `OfflineEmissionsTracker` as they are (for example `force_cpu_power` in watts when the
    processor's TDP is known). `totals` survive a resume through `state_dict` / `load_state_dict`.
    """

    enabled: bool = True
    country: str | None = None
    grid_intensity: float | None = None  # g CO2 per kWh
    gpu_ids: list[int] | None = None
    tracker_options: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, dict[str, float]] = field(default_factory=lambda: {p: {"kwh": 0.0, "co2_kg": 0.0} for p in PHASES})
    _tracker: Any = field(default=None, repr=False)

    def start(self) -> None:
        """Start the tracker (about a second: codecarbon detects the hardware); the first cut counts from here."""
        if not self.enabled or self._tracker is not None:
            return
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)  # it logs every measurement at INFO
        # no output at all, whatever a ~/.codecarbon.config or CODECARBON_* variable asks for (False, not None:
        # codecarbon reads None as "not given" and falls back to the configuration)
        options = {"output_methods": [], "emissions_endpoint": False, "log_level": "error",
                   "tracking_mode": "process", "allow_multiple_runs": True, **self.tracker_options}
        if self.country:
            options["country_iso_code"] = self.country
        if self.grid_intensity is not None:
            options["force_carbon_intensity_g_co2e_kwh"] = float(self.grid_intensity)
        if self.gpu_ids is not None:
            options["gpu_ids"] = self.gpu_ids
        self._tracker = OfflineEmissionsTracker(**options)
        self._tracker.start()
        self._tracker.start_task("greencore")

    def cut(self, phase: str) -> dict[str, float]:
        """Book the energy and CO2 since the previous cut (or the start) to `phase`; returns that phase's totals."""
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r}: use one of {', '.join(PHASES)}")
        if self._tracker is not None:
            delta = self._tracker.stop_task()
            self._tracker.start_task("greencore")
            if delta is not None:
                self.totals[phase]["kwh"] += float(delta.energy_consumed)
                self.totals[phase]["co2_kg"] += float(delta.emissions)
        return dict(self.totals[phase])

    def close(self) -> None:
        """Stop the tracker's threads (what was not cut yet is dropped); safe to call twice."""
        if self._tracker is not None:
            tracker, self._tracker = self._tracker, None
            tracker.stop_task()
            tracker.stop()

    @property
    def method(self) -> str | None:
        """How the figures are obtained on this machine, e.g. "estimated: CPU from TDP x load, RAM from its size" or
        "measured: nvml (GPU), rapl (CPU); estimated: RAM from its size"; None when disabled or not started."""
        if self._tracker is None:
            return None
        measured, estimated = [], []
        order = {"GPU": 0, "AllGPUDevices": 0, "CPU": 1, "RAM": 2}
        parts = sorted(self._tracker._hardware, key=lambda part: order.get(type(part).__name__, 3))
        for part in parts:  # codecarbon's hardware objects, as it reads them
            kind = type(part).__name__
            mode = getattr(part, "_mode", None)
            if kind in ("GPU", "AllGPUDevices"):
                measured.append("nvml (GPU)")
            elif kind == "CPU" and mode in _MEASURED:
                measured.append(f"{_MEASURED[mode]} (CPU)")
            elif kind == "CPU":
                estimated.append("CPU from a constant power" if mode == "constant" else "CPU from TDP x load")
            elif kind == "RAM":
                estimated.append("RAM from its size")
            else:
                estimated.append(kind)
        return "; ".join(([f"measured: {', '.join(measured)}"] if measured else [])
                         + ([f"estimated: {', '.join(estimated)}"] if estimated else []))

    @property
    def grid(self) -> dict[str, Any]:
        """The carbon intensity CO2 is computed with: g CO2 per kWh (None before any energy) and its source."""
        if self.grid_intensity is not None:
            source = "given (--grid-intensity)"
        elif self.country:
            source = f"codecarbon's offline data for {self.country}"
        else:
            source = "codecarbon's world average (no --country given)"
        return {"g_per_kwh": carbon_intensity(self.totals, self.grid_intensity), "source": source}

    def state_dict(self) -> dict[str, Any]:
        return {"totals": {p: dict(t) for p, t in self.totals.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for phase, values in state.get("totals", {}).items():
            self.totals[phase] = {"kwh": float(values["kwh"]), "co2_kg": float(values["co2_kg"])}


def carbon_intensity(phases: Mapping[str, Mapping[str, float]], given: float | None = None) -> float | None:
    """g CO2 per kWh behind `phases` ({phase: {"kwh", "co2_kg"}}): `given`, else their CO2 over their energy (None
    before any energy)."""
    if given is not None:
        return float(given)
    kwh = sum(p["kwh"] for p in phases.values())
    return 1000.0 * sum(p["co2_kg"] for p in phases.values()) / kwh if kwh > 0 else None


def energy_savings(summary: Mapping[str, Any], others: list[Mapping[str, Any]]) -> float | None:
    """The measured share of training energy `summary`'s run saved against a full fine-tuning run of the same model,
    data and steps among `others` (the first such), or None when there is none (or no energy was recorded): never a
    FLOPs-scaled guess."""
    if not summary.get("energy") or summary.get("scheme") == "full":
        return None
    for other in others:
        same = all(other.get(k) == summary.get(k) for k in ("model", "dataset", "steps", "train_examples"))
        if other.get("scheme") == "full" and same and other.get("energy") and other["energy"]["training"]["kwh"]:
            return 1.0 - summary["energy"]["training"]["kwh"] / other["energy"]["training"]["kwh"]
    return None
