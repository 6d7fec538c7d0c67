"""The app's event handlers: plain functions of plain values, so they are tested without a server.

Every mistake a user can make (unknown model, unreadable data file, invalid or infeasible rho, bad settings) comes
back as a message, never as an exception; unexpected errors are logged with their traceback and summarised. Figures
come from `greencore.plots`, profiles and importance from the cache in `greencore.explore`. Session state is passed in
and returned: the Explore tab keeps its `ExploreSpec`, the Train tab the directories of the runs it started.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd

from greencore import BUILTIN_MODELS, IMPORTANCE_METRICS, TrainConfig, list_runs, load_run, plots
from greencore.explore import ExploreSpec, check_dataset, explore
from greencore.importance import STRUCTURAL_METRICS
from greencore.meta import ARCHITECTURES
from greencore.records import RunRecord
from greencore.schemes import SCHEMES
from greencore.select import round_rho_up
from greencore.tasks import get_task

from . import runs as background

__all__ = [
    "ExploreView",
    "SelectionView",
    "compare_columns",
    "compare_runs",
    "explore_form",
    "live_view",
    "measure_selection",
    "profile_choice",
    "run_choices",
    "selection_view",
    "start_run",
    "stop_run",
    "task_form",
    "update_selection",
]

log = logging.getLogger(__name__)

SKIP = gr.skip()  # "leave this output as it is"
RUN_COLUMNS = ["run", "scheme", "rho", "FLOPs", "savings", "time", "energy", "CO2", "energy saved"]
PARETO_AXES = {"training FLOPs": "flops", "training energy": "energy"}


class ExploreView(NamedTuple):
    """What the Explore tab shows for one rho; figures are gr.skip() when an error leaves the last view in place."""

    message: str
    summary: str
    heatmap: Any
    breakdown: Any
    tradeoff: Any
    selection: Any


class SelectionView(NamedTuple):
    """The Train tab's view of a run's recorded selections."""

    message: str
    timeline: Any
    heatmap: Any
    index: Any  # a gr.Dropdown update listing the selections
    signature: Any


def _problem(err: Exception) -> str:
    """A user-facing message: a ValueError's own text (greencore says what to change), else a short summary."""
    if isinstance(err, ValueError):
        return f"⚠️ {err}"
    log.error("unexpected error in the app", exc_info=err)
    return f"⚠️ Unexpected error ({type(err).__name__}: {err}); the server log has the details."


def _whole(value: Any, name: str, *, minimum: int = 1, optional: bool = False) -> int | None:
    """A whole-number setting from a form field (None or 0 means "not set" when `optional`)."""
    if optional and (value is None or value == 0):
        return None
    if value is None or isinstance(value, bool) or not float(value).is_integer() or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _number(value: Any, name: str) -> float:
    """A number from a form field; an emptied field is a message, not a TypeError."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} is empty: enter a number")
    return float(value)


def _rho(value: Any) -> float:
    """rho from a form field, checked to be a number (select_tensors checks its range and feasibility)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"rho={value!r}: set rho to a fraction of full fine-tuning FLOPs in (0, 1]")
    return float(value)


# ----------------------------------------------------------------------------------------------------------- Explore


def profile_choice(
    current: ExploreSpec | None,
    model: str,
    dataset: str,
    batch_size: float,
    seq_len: float,
    metric: str,
    probe_batches: float,
    rho: float | None,
    color_by: str,
    config_only: bool = False,
    task: str = "summarization",
    progress: gr.Progress = gr.Progress(),
) -> tuple[ExploreSpec | None, ...]:
    """Profile and score a model choice (cached per choice), then show the selection at `rho`.

    `config_only` builds the model from its config on the meta device (no weights, no data: exact costs, a
    structural importance); `task` "classification" profiles the model under a new classification head on
    labelled batches. Returns the new session state followed by the `ExploreView` fields; on a bad choice the
    message says what to change, and the state (`current`) and the figures stay as they were.
    """
    try:
        spec = ExploreSpec(
            model=(model or "").strip(),
            dataset=(dataset or "").strip(),
            batch_size=_whole(batch_size, "batch size"),
            seq_len=_whole(seq_len, "sequence length"),
            metric=metric,
            probe_batches=_whole(probe_batches, "probe batches"),
            config_only=bool(config_only),
            task=task,
        )
        explore(spec, progress=lambda fraction, message: progress(fraction, desc=message))
    except Exception as err:
        return (current, *ExploreView(_problem(err), SKIP, SKIP, SKIP, SKIP, SKIP))
    return (spec, *update_selection(spec, rho, color_by))


def task_form(task: str) -> Any:
    """The data set list of `task` (Explore and Train), with its default chosen."""
    try:
        spec = get_task(task)
    except ValueError as err:
        gr.Warning(str(err))
        return SKIP
    return gr.update(choices=list(spec.datasets()), value=spec.default_dataset)


def explore_form(config_only: bool, model: str, metric: str) -> tuple[Any, Any, Any, Any]:
    """The Explore form with or without weights: updates for the model list (config only adds the architectures of
    `greencore.meta.ARCHITECTURES`), the metric list (structural only, without weights), and the data set and probe
    batches fields, which play no part without weights."""
    if config_only:
        models, metrics, default_metric = [*ARCHITECTURES, *BUILTIN_MODELS], list(STRUCTURAL_METRICS), "uniform"
    else:
        models, metrics, default_metric = list(BUILTIN_MODELS), list(IMPORTANCE_METRICS), "taylor"
        if model in ARCHITECTURES:  # an architecture has no weights to load
            model = ExploreSpec().model
        if metric in STRUCTURAL_METRICS:
            metric = default_metric
    return (gr.update(choices=models, value=model),
            gr.update(choices=metrics, value=metric if metric in metrics else default_metric),
            gr.update(interactive=not config_only), gr.update(interactive=not config_only))


def update_selection(spec: ExploreSpec | None, rho: float | None, color_by: str) -> ExploreView:
    """Re-run only the selector at `rho` on the cached profile and importance, and redraw the three figures."""
    if spec is None:
        return ExploreView("Choose a model and data set, then press **Profile**.", "", SKIP, SKIP, SKIP, SKIP)
    try:
        ex = explore(spec)
        selection = ex.select(_rho(rho))
    except Exception as err:
        return ExploreView(_problem(err), "", SKIP, SKIP, SKIP, SKIP)
    profile, importance = ex.profile, ex.importance
    shape = f"{spec.model} at batch {spec.batch_size} x {spec.seq_len} tokens"
    costs = (f"forward {plots.format_flops(profile.t_fp)}, full step {plots.format_flops(profile.full_flops)}; the "
             f"smallest rho that trains a tensor is **{round_rho_up(profile.min_training_rho):.3f}** (the forward "
             f"pass alone costs {profile.min_rho:.3f}).")
    if spec.config_only:
        deepest = profile.deepest_trainable(rho)
        reach = "nothing" if deepest < 0 else f"`{profile.names[deepest]}` ({_where(profile.layout[deepest])})"
        goal = {"uniform": "as many tensors", "params": "as many parameters"}[spec.metric]
        summary = (
            f"**Config only (no weights)**: {shape}, built on the meta device, every position scored: {costs}  \n"
            f"At rho = {rho:.2f} backprop reaches down to {reach}. **Structural selection** ({spec.metric}: {goal} "
            f"as the budget allows): {len(selection.trainable)} of {len(profile)} tensors, predicted step FLOPs "
            f"**{selection.predicted_ratio:.1%}** of full fine-tuning. Without weights there is no importance: "
            f"*this is not the selection GreenTrainer would learn.*"
        )
        title = (f"Structural selection ({spec.metric}), {int(selection.mask.sum())} of {len(profile)} tensors: "
                 "not GreenTrainer's learned choice")
    else:
        positive = float(importance[importance > 0].sum())
        share = selection.objective / positive if positive > 0 else 0.0
        summary = (
            f"**{len(selection.trainable)} of {len(profile)} tensors trained** at rho = {rho:.2f}: predicted step "
            f"FLOPs **{selection.predicted_ratio:.1%}** of full fine-tuning (chain bound {selection.chain_ratio:.1%}), "
            f"{share:.0%} of the positive importance.  \n{shape}: {costs}"
        )
        title = None
    heatmap = plots.selection_heatmap(profile, selection.mask, importance, color_by=color_by, title=title)
    return ExploreView(
        "", summary, heatmap, plots.flops_breakdown(profile, selection.mask), ex.tradeoff(rho), selection.to_dict()
    )


def _where(lay: Any) -> str:
    """A tensor's block in words: "block 3", "encoder block 0", "outside the blocks"."""
    if lay.block is None:
        return "outside the blocks"
    return ("" if lay.stack == "none" else f"{lay.stack} ") + f"block {lay.block}"


def measure_selection(spec: ExploreSpec | None, rho: float | None) -> str:
    """The current selection's FLOPs measured with FlopCounterMode on the cached batch, against the prediction."""
    if spec is None:
        return "Profile a model first."
    try:
        ex = explore(spec)
        selection = ex.select(_rho(rho))
        measured = ex.measured_ratio(selection)
    except Exception as err:
        return _problem(err)
    where = "on the meta device (config only)" if spec.config_only else "on the cached batch"
    return (
        f"Measured {where}: {plots.format_flops(measured['measured'])} of "
        f"{plots.format_flops(measured['full'])} per step = **{measured['ratio']:.1%}** of full fine-tuning "
        f"(predicted {selection.predicted_ratio:.1%}, rho = {rho:.2f})."
    )


# ------------------------------------------------------------------------------------------------------------- Train


def start_run(
    runs_dir: str | Path,
    runs: list[str],
    model: str,
    dataset: str,
    scheme: str,
    rho: float | None,
    k: float | None,
    epochs: float,
    max_steps: float | None,
    batch_size: float,
    lr: float,
    interval: float,
    interval_unit: str,
    max_train_examples: float | None,
    max_eval_examples: float | None,
    num_beams: float,
    eval_rouge: bool,
    precision: str = "auto",
    task: str = "summarization",
    split_tied: bool = False,
    probe: str = "batches",
    importance_ema: float | None = 0.0,
    rho_shift: float | None = 0.0,
) -> tuple[list[str], str, Any]:
    """Start a run of `scheme` on `task` in the background; returns the session's runs, a message and the run
    chooser."""
    try:
        dataset = (dataset or "").strip() or get_task(task).default_dataset
        if dataset not in get_task(task).datasets():
            check_dataset(dataset, task)  # a local file: say now, not from the run's thread, if it cannot be read
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
        parameter = SCHEMES[scheme].parameter
        config = TrainConfig(
            model=(model or "").strip(),
            task=task,
            dataset=dataset,
            scheme=scheme,
            rho=_rho(rho) if parameter == "rho" else None,
            k=_whole(k, "k") if parameter == "k" else None,
            epochs=_whole(epochs, "epochs"),
            max_steps=_whole(max_steps, "max steps", optional=True),
            batch_size=_whole(batch_size, "batch size"),
            lr=_number(lr, "learning rate"),
            interval=_whole(interval, "interval"),
            interval_unit=interval_unit,
            max_train_examples=_whole(max_train_examples, "max train examples", optional=True),
            max_eval_examples=_whole(max_eval_examples, "max eval examples", optional=True),
            num_beams=_whole(num_beams, "beams"),
            eval_rouge=bool(eval_rouge),
            precision=precision,
            split_tied=bool(split_tied),
            probe=probe,
            importance_ema=_number(importance_ema, "importance EMA"),
            rho_shift=_number(rho_shift, "budget shift") if parameter == "rho" else 0.0,
        )
        handle = background.start(config, Path(runs_dir))
    except Exception as err:
        return runs, _problem(err), SKIP
    runs = [*runs, str(handle.run.out)]
    ahead = handle.ahead
    message = (f"Queued **{handle.run.config.name}** ({ahead} run(s) ahead; runs train one at a time so that each "
               f"is reproducible), to `{handle.run.out}`." if ahead else
               f"Started **{handle.run.config.name}** in `{handle.run.out}`.")
    return runs, message, gr.Dropdown(choices=run_choices(runs), value=str(handle.run.out))


def stop_run(runs: list[str], chosen: str | None) -> str:
    """Ask the chosen run of this session to stop after its current step (it keeps a checkpoint)."""
    handle = background.get(chosen) if chosen in runs else None
    if handle is None:
        return "Choose one of the runs started in this session."
    if not handle.running:
        return f"{handle.run.config.name} has already ended ({handle.status})."
    handle.stop()
    if handle.cancelled:
        return f"Cancelled **{handle.run.config.name}** before it started; it wrote nothing."
    return f"Stopping **{handle.run.config.name}** after its current step; its checkpoint is kept."


def run_choices(runs: list[str]) -> list[tuple[str, str]]:
    """(label, directory) of each run of the session, for a dropdown."""
    choices = []
    for path in runs:
        handle = background.get(path)
        choices.append((handle.run.config.name if handle else Path(path).name, path))
    return choices


def live_view(runs: list[str], last: Any = None) -> tuple[Any, Any, Any, Any]:
    """Status table, loss curves and FLOPs progress of the session's runs, re-read from their directories.

    Returns (status html, loss figure, FLOPs figure, signature); the first three are gr.skip() when nothing changed
    since the call that returned `last`.
    """
    records = _records(runs)
    signature = tuple(
        (path, _status(path, rec), len(rec.metrics) if rec else 0) for path, rec in zip(runs, records)
    )
    if signature == last:
        return SKIP, SKIP, SKIP, last
    found = {rec.label: rec.metrics for rec in records if rec is not None}
    rows = "".join(_status_row(path, rec) for path, rec in zip(runs, records))
    table = (
        "<table class='gc-runs'><tr><th>run</th><th>status</th><th>progress</th><th>last loss</th>"
        f"<th>FLOPs so far (vs full fine-tuning)</th><th>energy and CO2 so far</th></tr>{rows}</table>"
        if runs
        else "<p>No runs started in this session yet.</p>"
    )
    return table, plots.loss_curves(found), plots.flops_progress(found), signature


def selection_view(
    runs: list[str], chosen: str | None, index: str | None, color_by: str, last: Any = None
) -> SelectionView:
    """The chosen run's re-selection timeline and one selection (`index`, default the latest) as a heatmap.

    Fields are gr.skip() when nothing changed since the call that returned `last`.
    """
    record = _records([chosen])[0] if chosen in runs else None
    selections = record.selections if record else []
    choices = [(f"#{s['index']} (step {s['step']})", str(s["index"])) for s in selections]
    if index not in {value for _, value in choices}:
        index = choices[-1][1] if choices else None
    signature = (chosen, len(selections), index, color_by)
    if signature == last:
        return SelectionView(SKIP, SKIP, SKIP, SKIP, last)
    dropdown = gr.Dropdown(choices=choices, value=index)
    if record is None:
        return SelectionView("Choose a run started in this session.", None, None, dropdown, signature)
    if not selections:
        why = "no selection recorded yet" if record.reselects else f"scheme {record.config['scheme']} does not re-select"
        return SelectionView(f"{record.label}: {why}.", None, None, dropdown, signature)
    try:
        profile = record.profile()
        if list(selections[0]["names"]) != profile.names:
            raise ValueError(f"the tensors of {record.label}'s selections differ from its saved profile")
        chosen_sel = next(s for s in selections if str(s["index"]) == index)
        timeline = plots.selection_timeline(selections, profile.layout)
        heatmap = plots.selection_heatmap(
            profile,
            chosen_sel["mask"],
            chosen_sel["importance"],
            color_by=color_by,
            scored=chosen_sel.get("scored"),
            title=f"Selection #{index} of {record.label} at step {chosen_sel['step']}",
        )
    except Exception as err:
        return SelectionView(_problem(err), plots.selection_timeline(selections), None, dropdown, signature)
    message = (
        f"{record.label}: selection #{index} trains {chosen_sel['trainable_tensors']} tensors, predicted step FLOPs "
        f"{chosen_sel['predicted_ratio']:.1%} of full (FLOPs per tensor from the profile the run selected with)."
    )
    return SelectionView(message, timeline, heatmap, dropdown, signature)


def _records(paths: list[str | None]) -> list[RunRecord | None]:
    """Each run directory read back, or None while it holds no record yet (the run is still loading)."""
    records = []
    for path in paths:
        try:
            records.append(load_run(path) if path else None)
        except ValueError:
            records.append(None)
    return records


def _status(path: str, record: RunRecord | None) -> str:
    handle = background.get(path)
    if handle is not None:
        return handle.status
    return (record.summary or {}).get("status", "unknown") if record else "unknown"


def _status_row(path: str, record: RunRecord | None) -> str:
    handle = background.get(path)
    label = record.label if record else (handle.run.config.name if handle else Path(path).name)
    status = _status(path, record)
    if handle is not None and handle.error:
        status = f"{status}: {handle.error}"
    train = record.train_rows if record else []
    if train:
        last = train[-1]
        total = last["total_steps"]
        progress = f"<progress value='{last['step']}' max='{total}'></progress> {last['step']}/{total}"
        loss = f"{last['loss']:.3f}"
        spent = (
            f"{plots.format_flops(last['flops'])} of {plots.format_flops(last['flops_full'])} "
            f"({last['flops'] / last['flops_full']:.0%})"
            if last["flops_full"]
            else plots.format_flops(last["flops"])
        )
        energy = "off (--no-energy)" if last.get("energy_kwh") is None else (
            f"{plots.format_energy(last['energy_kwh'])}, {plots.format_co2(last['co2_kg'])} CO2 "
            f"({plots.energy_tag({'method': last.get('energy_method')})})")
    else:
        progress, loss, spent, energy = "<progress></progress> loading", "-", "-", "-"
    cells = (label, status, None, loss, spent, energy)
    return "<tr>" + "".join(f"<td>{progress if c is None else html.escape(c)}</td>" for c in cells) + "</tr>"


# ----------------------------------------------------------------------------------------------------------- Compare


def compare_runs(runs_dir: str | Path, axis: str = "training FLOPs") -> tuple[str, pd.DataFrame, Any]:
    """Every run with a summary under `runs_dir` (app and CLI runs alike): a table with each task's scores (ROUGE,
    or accuracy and macro-F1 beside the majority class's) and the headline score against training FLOPs or energy
    (`axis`, a key of PARETO_AXES).

    A damaged run is listed with its folder and what is wrong, after the others, and hides none of them."""
    runs_dir = Path(runs_dir)
    try:
        found = list_runs(runs_dir)
        records = [rec for rec in found if rec.damaged is None and rec.summary is not None]
        damaged = [rec for rec in found if rec.damaged is not None]
        summaries = [rec.summary for rec in records]
        rows = [
            {**row, "status": rec.summary.get("status", ""), "directory": str(rec.path.relative_to(runs_dir))}
            for row, rec in zip(plots.comparison_rows(summaries), records)
        ]
        rows += [{"run": rec.path.name, "status": f"damaged: {rec.damaged}",
                  "directory": str(rec.path.relative_to(runs_dir))} for rec in damaged]
        figure = plots.pareto(summaries, x=PARETO_AXES.get(axis, "flops"))
        columns = compare_columns(summaries)
    except Exception as err:
        return _problem(err), pd.DataFrame(columns=compare_columns()), None
    message = f"{len(records)} run(s) with a summary" if records else "No finished runs"
    if damaged:
        message += f", {len(damaged)} damaged (see their status)"
    return f"{message} under `{runs_dir}`.", pd.DataFrame(rows, columns=columns), figure


def compare_columns(summaries: list | tuple = ()) -> list[str]:
    """The Compare table's columns: the runs' costs, their tasks' scores (`plots.score_columns`), status and
    folder."""
    return [*RUN_COLUMNS, *(label for label, _ in plots.score_columns(summaries)), "status", "directory"]
