"""The Gradio app: Explore (profile, importance and selection at any rho), Train (background runs, live) and Compare.

`build_app(runs_dir)` lays out the components and wires them to the plain functions in `handlers`; `launch()`
serves it on this machine only by default, with no share link and no analytics. The Train tab's defaults are
`TrainConfig`'s, so the app, the CLI and the library start from the same settings.
"""

from __future__ import annotations

from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from greencore import BUILTIN_MODELS, IMPORTANCE_METRICS, PRECISIONS, TrainConfig
from greencore.explore import ExploreSpec
from greencore.plots import COLOR_BY
from greencore.schemes import SCHEMES
from greencore.tasks import TASKS, get_task

from . import handlers

__all__ = ["LAUNCH_OPTIONS", "build_app", "launch"]

CSS = """
.gc-runs { width: 100%; border-collapse: collapse; font-size: 0.9em; }
.gc-runs th, .gc-runs td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e5e7eb; }
.gc-runs progress { width: 8em; vertical-align: middle; }
"""
THEME = gr.themes.Default(primary_hue="green", font=["system-ui", "sans-serif"], font_mono=["monospace"])
LAUNCH_OPTIONS: dict[str, Any] = {"theme": THEME, "css": CSS, "ssr_mode": False, "footer_links": ["api"]}
"""Options every launch uses (tests that serve `build_app()` themselves pass them too)."""

POLL_SECONDS = 1.0
INTRO = (
    "# greencore: GreenTrainer\n"
    "Fine-tune under a FLOPs budget **rho**: train only the tensors whose update helps the loss most, and pay "
    "backpropagation only down to the deepest of them. **Explore** what a budget buys without training, **Train** "
    "runs of any scheme in the background, **Compare** finished runs (also those of `greencore train`/`compare`)."
)


def build_app(runs_dir: str | Path = Path("runs"), *, explore_defaults: ExploreSpec = ExploreSpec(),
              profile_on_load: bool = True) -> gr.Blocks:
    """The app's Blocks. Runs are written to and read from `runs_dir`; the Explore tab starts from
    `explore_defaults` (the offline default, smollm2 on stdlib-tldr) and profiles it when a page opens; the Train
    tab starts from `TrainConfig.demo()`, a run that finishes in a few minutes on a CPU."""
    runs_dir = Path(runs_dir)
    d = explore_defaults
    t = TrainConfig.demo(model=d.model, dataset=d.dataset)
    with gr.Blocks(title="greencore", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        spec_state = gr.State(None)
        runs_state = gr.State([])
        live_state = gr.State(None)
        selection_state = gr.State(None)

        with gr.Tab("Explore", id="explore"):
            with gr.Row():
                model = gr.Dropdown(list(BUILTIN_MODELS), value=d.model, label="model", allow_custom_value=True,
                                    info="built-in name, hub id or local path", elem_id="explore-model")
                config_only = gr.Checkbox(d.config_only, label="config only (no weights)", elem_id="config-only",
                                          info="any size, built on the meta device: exact costs, structural "
                                               "importance (Llama-3-70B, a config.json, a hub id's config)")
                task = gr.Radio(list(TASKS), value=d.task, label="task", elem_id="explore-task",
                                info="classification: a new classification head on labelled text")
                dataset = gr.Dropdown(list(get_task(d.task).datasets()), value=d.dataset, label="data set",
                                      allow_custom_value=True, info="or the path of a .jsonl/.csv file")
                metric = gr.Dropdown(list(IMPORTANCE_METRICS), value=d.metric, label="importance metric",
                                     elem_id="explore-metric")
            with gr.Row():
                batch_size = gr.Number(d.batch_size, label="batch size")
                seq_len = gr.Number(d.seq_len, label="sequence length")
                probe_batches = gr.Number(d.probe_batches, label="probe batches")
                profile_button = gr.Button("Profile", variant="primary", elem_id="profile-button")
            rho = gr.Slider(0.05, 1.0, value=t.rho, step=0.01, label="rho (step FLOPs budget, fraction of full)",
                            elem_id="rho")
            explore_message = gr.Markdown(elem_id="explore-message")
            summary = gr.Markdown(elem_id="explore-summary")
            with gr.Row():
                color_by = gr.Radio(list(COLOR_BY), value="selected", label="heatmap colour", scale=2)
                measure_button = gr.Button("Measure this selection's FLOPs", scale=1)
                measured = gr.Markdown(elem_id="explore-measured", scale=2)
            heatmap = gr.Plot(label="per-layer selection", elem_id="explore-heatmap")
            with gr.Row():
                breakdown = gr.Plot(label="FLOPs of one step")
                tradeoff = gr.Plot(label="trade-off against rho")
            with gr.Accordion("selection as JSON", open=False):
                selection_json = gr.JSON(label="selection")

        with gr.Tab("Train", id="train"):
            with gr.Row():
                train_model = gr.Dropdown(list(BUILTIN_MODELS), value=t.model, label="model", allow_custom_value=True)
                train_task = gr.Radio(list(TASKS), value=t.task, label="task", elem_id="train-task")
                train_dataset = gr.Dropdown(list(t.task_spec.datasets()), value=t.dataset, label="data set",
                                            allow_custom_value=True)
                scheme = gr.Dropdown(list(SCHEMES), value=t.spec.name, label="scheme")
                train_rho = gr.Number(t.rho, label="rho (green, random)", step=0.05)
                k = gr.Number(_field_default("k"), label="k (top-k blocks)")
            with gr.Row():
                epochs = gr.Number(t.epochs, label="epochs")
                max_steps = gr.Number(t.max_steps or 0, label="max steps (0: all)", elem_id="max-steps")
                lr = gr.Number(t.lr, label="learning rate")
                interval = gr.Number(t.interval, label="re-select every")
                interval_unit = gr.Radio(["epoch", "step"], value=t.interval_unit, label="interval unit")
            with gr.Row():
                train_batch = gr.Number(t.batch_size, label="batch size", elem_id="train-batch")
                max_train = gr.Number(t.max_train_examples or 0, label="max train examples (0: all)",
                                      elem_id="max-train")
                max_eval = gr.Number(t.max_eval_examples or 0, label="max eval examples (0: all)",
                                     elem_id="max-eval")
                num_beams = gr.Number(t.num_beams, label="beams (1: greedy)", elem_id="num-beams")
                eval_rouge = gr.Checkbox(t.eval_rouge, label="ROUGE at the end (summarization)")
                precision = gr.Dropdown(list(PRECISIONS), value=t.precision, label="precision",
                                        info="auto: bf16 on a GPU that has it, else fp32", elem_id="precision")
                start_button = gr.Button("Start run", variant="primary", elem_id="start-run")
            with gr.Accordion("Options beyond the paper (green, random; off by default)", open=False):
                with gr.Row():
                    split_tied = gr.Checkbox(t.split_tied, label="split a tied weight into its uses",
                                             info=_field_help("split_tied"), elem_id="split-tied")
                    probe = gr.Radio(["batches", "step"], value=t.probe, label="importance from",
                                     info=_field_help("probe"), elem_id="probe")
                    importance_ema = gr.Number(t.importance_ema, label="importance EMA (0: off)",
                                               info=_field_help("importance_ema"), elem_id="importance-ema")
                    rho_shift = gr.Number(t.rho_shift, label="budget shift over the run (0: off)",
                                          info=_field_help("rho_shift"), elem_id="rho-shift")
            train_message = gr.Markdown(elem_id="train-message")
            with gr.Row():
                run_choice = gr.Dropdown([], label="run", scale=3)
                stop_button = gr.Button("Stop run", variant="stop", scale=1)
            status = gr.HTML("<p>No runs started in this session yet.</p>", elem_id="train-status")
            with gr.Row():
                loss_plot = gr.Plot(label="loss", elem_id="loss-plot")
                flops_plot = gr.Plot(label="training FLOPs")
            with gr.Row():
                selection_index = gr.Dropdown([], label="selection", scale=2)
                run_color_by = gr.Radio(list(COLOR_BY), value="selected", label="heatmap colour", scale=3)
            selection_message = gr.Markdown()
            timeline = gr.Plot(label="re-selections", elem_id="timeline")
            run_heatmap = gr.Plot(label="one selection, per layer")
            timer = gr.Timer(POLL_SECONDS)

        with gr.Tab("Compare", id="compare") as compare_tab:
            with gr.Row():
                compare_message = gr.Markdown(scale=3)
                pareto_axis = gr.Radio(list(handlers.PARETO_AXES), value="training FLOPs", label="x axis", scale=2,
                                       elem_id="pareto-axis")
                refresh = gr.Button("Refresh", scale=1)
            table = gr.Dataframe(headers=handlers.compare_columns(), label="runs", interactive=False, wrap=True,
                                 elem_id="compare-table")
            pareto = gr.Plot(label="ROUGE-L (or accuracy, for classification runs) against training FLOPs or energy",
                             elem_id="pareto")

        # Explore
        explore_inputs = [spec_state, model, dataset, batch_size, seq_len, metric, probe_batches, rho, color_by,
                          config_only, task]
        task.change(handlers.task_form, task, dataset, api_visibility="private")
        config_only.change(handlers.explore_form, [config_only, model, metric], [model, metric, dataset, probe_batches],
                           api_visibility="private")
        view = [explore_message, summary, heatmap, breakdown, tradeoff, selection_json]
        profile_button.click(handlers.profile_choice, explore_inputs, [spec_state, *view], api_name="profile")
        if profile_on_load:
            demo.load(handlers.profile_choice, explore_inputs, [spec_state, *view], api_visibility="private")
        select_event = {"fn": handlers.update_selection, "inputs": [spec_state, rho, color_by], "outputs": view,
                        "trigger_mode": "always_last", "show_progress": "hidden"}
        rho.change(**select_event, api_name="select")
        color_by.change(**select_event, api_visibility="private")
        measure_button.click(handlers.measure_selection, [spec_state, rho], measured, api_name="measure")

        # Train
        settings = [train_model, train_dataset, scheme, train_rho, k, epochs, max_steps, train_batch, lr, interval,
                    interval_unit, max_train, max_eval, num_beams, eval_rouge, precision, train_task, split_tied, probe,
                    importance_ema, rho_shift]
        train_task.change(handlers.task_form, train_task, train_dataset, api_visibility="private")
        start_button.click(partial(handlers.start_run, runs_dir), [runs_state, *settings],
                           [runs_state, train_message, run_choice], api_name="start_run")
        stop_button.click(handlers.stop_run, [runs_state, run_choice], train_message, api_name="stop_run")
        timer.tick(handlers.live_view, [runs_state, live_state], [status, loss_plot, flops_plot, live_state],
                   api_name="poll", show_progress="hidden")
        selection_outputs = [selection_message, timeline, run_heatmap, selection_index, selection_state]
        timer.tick(handlers.selection_view, [runs_state, run_choice, selection_index, run_color_by, selection_state],
                   selection_outputs, api_visibility="private", show_progress="hidden")
        for control in (run_choice, selection_index, run_color_by):
            control.change(handlers.selection_view, [runs_state, run_choice, selection_index, run_color_by],
                           selection_outputs, api_visibility="private", show_progress="hidden")

        # Compare
        compare = {"fn": partial(handlers.compare_runs, runs_dir), "inputs": [pareto_axis],
                   "outputs": [compare_message, table, pareto]}
        refresh.click(**compare, api_name="compare")
        pareto_axis.change(**compare, api_visibility="private")
        compare_tab.select(**compare, api_visibility="private")
        demo.load(**compare, api_visibility="private")
    return demo


def _field_help(name: str) -> str:
    """A `TrainConfig` field's help text, the one the CLI prints."""
    return next(f.metadata["help"] for f in fields(TrainConfig) if f.name == name)


def _field_default(name: str) -> Any:
    """A `TrainConfig` field's declared default (the default config normalises k away for schemes without it)."""
    return next(f.default for f in fields(TrainConfig) if f.name == name)


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, runs_dir: Path = Path("runs")) -> None:
    """Serve the app (blocking) on `host`:`port`; `share=True` also opens a public gradio.live link."""
    demo = build_app(runs_dir)
    demo.queue().launch(server_name=host, server_port=port, share=share, **LAUNCH_OPTIONS)
