"""The `greencore` command: profile, select, train, compare, app.

Every subcommand composes library calls; bad arguments end with exit status 2 and one line saying what to fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(2, f"greencore: error: {message} (see `{self.prog} --help`)\n")


def _whole(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse names the flag in its message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _common_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="built-in name, hub id or local path (default: smollm2)")
    from .tasks import TASKS
    from .training.config import TrainConfig

    p.add_argument("--task", default="summarization", choices=tuple(TASKS),
                   help="summarization, or classification (the model under a new classification head)")
    p.add_argument("--dataset", help="default: the task's (stdlib-tldr; stdlib-topic for classification); a hub "
                                     "preset, or a .jsonl/.csv path")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and the probe batches")

    prompt = next(f for f in dataclasses.fields(TrainConfig) if f.name == "prompt")
    p.add_argument("--prompt", default=prompt.default, choices=prompt.metadata["choices"],
                   help=f"prompt of the probe batches, as in train (default: {prompt.default})")
    split = next(f for f in dataclasses.fields(TrainConfig) if f.name == "split_tied")
    p.add_argument("--split-tied", action="store_true", help=split.metadata["help"])
    p.add_argument("--config-only", action="store_true",
                   help="no weights: build the model from its config on the meta device (any size; --model may also "
                        "be an architecture such as llama-3-70b, or a config.json), one batch of full rows")


def _config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...]) -> None:
    """One flag per `TrainConfig` field (its default and help text come from the field), except `skip`."""
    from .training.config import TrainConfig, flag

    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        # no default here: `args` holds only the flags given (TrainConfig fills in the rest), so that --resume can
        # tell a flag the user typed from a default
        if f.type == "bool":  # a switch that turns a default-on setting off, or a default-off one on
            p.add_argument(flag(f.name), dest=f.name, action="store_false" if f.default else "store_true",
                           default=argparse.SUPPRESS, help=f.metadata["help"])
            continue
        kind = {"int": int, "float": float}.get(f.type.replace(" | None", ""), str)
        shown = "" if f.default is None else f" (default: {f.default})"
        p.add_argument(flag(f.name), dest=f.name, type=kind, default=argparse.SUPPRESS,
                       choices=f.metadata.get("choices"), help=f.metadata["help"] + shown)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="greencore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("profile", help="per-tensor FLOPs of one training step, in backprop order")
    _common_model(p)
    p.add_argument("--batch-size", type=_whole, default=4, help="rows of the profiled batch (default: 4)")
    p.add_argument("--seq-len", type=_whole, default=128, help="tokens per row of the profiled batch (default: 128)")
    p.add_argument("--json", type=Path, help="also write names, t_fp, t_dy, t_dw and layout here")

    p = sub.add_parser("select", help="choose the tensors to train at a FLOPs budget rho")
    _common_model(p)
    p.add_argument("--rho", type=float, required=True, help="step FLOPs as a fraction of full fine-tuning, in (0, 1]")
    p.add_argument("--metric", help="importance metric: taylor, grad_l1, fisher, magnitude, random, or the "
                   "structural uniform or params (default: taylor; with --config-only: uniform)")
    p.add_argument("--probe-batches", type=_whole, default=2, help="batches the importance is averaged over")
    p.add_argument("--batch-size", type=_whole, default=4, help="rows per probe batch (default: 4)")
    p.add_argument("--seq-len", type=_whole, default=128, help="tokens per row (default: 128)")
    p.add_argument("--json", type=Path, help="also write the selection here")

    p = sub.add_parser("train", help="fine-tune with one scheme")
    _config_flags(p, skip=("label",))
    p.add_argument("--resume", type=Path, help="continue the interrupted run in this directory")
    p.add_argument("--out", type=Path, help="run directory")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")

    p = sub.add_parser("compare", help="run several schemes on the same data")
    _config_flags(p, skip=("label", "scheme"))
    p.add_argument("--schemes", default="full,green:0.5,green:0.7,lora,top-k:2,random:0.5",
                   help="comma-separated, e.g. full,green:0.5,lora,top-k:2,random:0.5")
    p.add_argument("--out", type=Path, help="one sub-directory per scheme goes here")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")

    p = sub.add_parser("app", help="launch the Gradio app (offline default: smollm2 on stdlib-tldr)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the app's runs are written and read")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, OSError) as err:  # bad input, or a path that cannot be read or written
        print("greencore: error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2


def _loaded(args):
    from .meta import load_config, meta_batch, meta_model
    from .models import check_batch_shape, load_model
    from .tasks import get_task

    task = get_task(args.task)
    dataset = args.dataset or task.default_dataset
    if args.config_only:
        if task.new_head:
            raise ValueError(f"--config-only profiles a language model; for --task {args.task}, drop --config-only")
        model = meta_model(load_config(args.model))
        check_batch_shape(model, args.batch_size, args.seq_len)
        return model, [meta_batch(model, args.batch_size, args.seq_len, seed=args.seed)]
    model, tokenizer = load_model(args.model, seed=args.seed, device=args.device,
                                  num_labels=task.num_labels_of(dataset))
    model.train()
    check_batch_shape(model, args.batch_size, args.seq_len)
    count = getattr(args, "probe_batches", 1)
    batches = task.sample(tokenizer, dataset, is_encoder_decoder=bool(model.config.is_encoder_decoder),
                          batch_size=args.batch_size, seq_len=args.seq_len, count=count, seed=args.seed,
                          prompt=args.prompt)
    device = next(model.parameters()).device
    return model, [{k: v.to(device) for k, v in b.items()} for b in batches]


def _profile(args) -> int:
    from .plots import format_flops
    from .profile import profile_model
    from .select import round_rho_up

    model, batches = _loaded(args)
    profile = profile_model(model, batches[0], split_tied=args.split_tied)
    rows = [(n, lay.stack if lay.stack != "none" else "", "" if lay.block is None else str(lay.block), lay.type,
             format_flops(dw), format_flops(dy)) for n, lay, dw, dy in
            zip(profile.names, profile.layout, profile.t_dw, profile.t_dy)]
    _print_table(("tensor (backprop order)", "stack", "block", "type", "t_dw", "t_dy"), rows)
    print(f"\n{len(profile)} tensors; forward {format_flops(profile.t_fp)}, activation gradients "
          f"{format_flops(profile.t_dy.sum())}, weight gradients {format_flops(profile.t_dw.sum())}, "
          f"full step {format_flops(profile.full_flops)}; smallest rho that trains a tensor "
          f"{round_rho_up(profile.min_training_rho):.3f} (the forward pass alone: {profile.min_rho:.3f})")
    if args.json:
        _write_json(args.json, {"model": args.model, "config_only": args.config_only, "batch_size": args.batch_size,
                                "seq_len": args.seq_len, **profile.to_dict()})
    return 0


def _select(args) -> int:
    from .flops import measure_training_flops
    from .importance import STRUCTURAL_METRICS, tensor_importance
    from .plots import format_flops
    from .profile import profile_model
    from .select import select_tensors

    if not 0 < args.rho <= 1:
        raise ValueError(f"--rho {args.rho} must be in (0, 1]")
    metric = args.metric or ("uniform" if args.config_only else "taylor")
    if args.config_only and metric not in STRUCTURAL_METRICS:
        raise ValueError(f"--metric {metric} needs the model's weights; with --config-only use "
                         f"{' or '.join(STRUCTURAL_METRICS)}")
    model, batches = _loaded(args)
    profile = profile_model(model, batches[0], split_tied=args.split_tied)
    importance = tensor_importance(model, batches, metric=metric, profile=profile, seed=args.seed)
    selection = select_tensors(profile, importance, args.rho)
    measured = measure_training_flops(model, batches[0], selection.trainable, names=profile.names)["total"]
    full = measure_training_flops(model, batches[0], profile.names)["total"]
    rows = [(n, str(profile.layout[i].block if profile.layout[i].block is not None else ""),
             profile.layout[i].type, f"{importance[i]:.3g}", format_flops(profile.t_dw[i]))
            for i, n in enumerate(profile.names) if selection.mask[i]]
    _print_table(("selected tensor", "block", "type", "importance", "t_dw"), rows)
    print(f"\n{len(selection.trainable)} of {len(profile)} tensors at rho={args.rho}: predicted step FLOPs "
          f"{selection.predicted_ratio:.3f} of full fine-tuning, measured {measured / full:.3f} "
          f"({format_flops(measured)} of {format_flops(full)})")
    if metric in STRUCTURAL_METRICS:
        print(f"importance: {metric}, a structural one (no weights, no data): not the selection GreenTrainer would "
              "learn")
    if args.json:
        _write_json(args.json, {"model": args.model, "config_only": args.config_only, "metric": metric,
                                **selection.to_dict(), "measured_ratio": measured / full,
                                "importance": importance.tolist(), "names": profile.names})
    return 0


def _given(args) -> dict:
    """The `TrainConfig` settings given as flags (the parser keeps no defaults for them)."""
    from .training.config import TrainConfig

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}


def _config(args, scheme: str | None = None):
    """The run's `TrainConfig` from the flags given; `compare` passes each of its schemes."""
    from .training.config import TrainConfig

    return TrainConfig(**_given(args), **({"scheme": scheme} if scheme else {}))


def _drive(run, desc: str) -> dict:
    """Run with a progress bar; the first Ctrl-C stops cleanly after the step (checkpoint + summary)."""
    from tqdm import tqdm

    previous = signal.signal(signal.SIGINT, lambda *_: run.stop("interrupted"))
    main_rank = run.dist.is_main
    bar = tqdm(desc=desc, unit="step", dynamic_ncols=True, disable=not main_rank)
    try:
        for event in run.events():
            if event["type"] == "train":
                bar.total = event["total_steps"]
                bar.update(event["step"] - bar.n)
                bar.set_postfix(loss=f"{event['loss']:.3f}", flops=f"{event['flops'] / max(event['flops_full'], 1):.2f}")
            elif event["type"] == "resume" and main_rank:
                bar.total = event["total_steps"]
                bar.update(event["step"] - bar.n)
                bar.write(f"resumed from {event['checkpoint']} at step {event['step']} of {event['total_steps']}")
            elif event["type"] == "selection" and main_rank:
                bar.write(f"selection {event['index']}: {event['trainable_tensors']} tensors, predicted ratio "
                          f"{event['predicted_ratio']:.3f}")
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
    return run.summary


def _train(args) -> int:
    from .training import Run

    if args.resume:
        run = Run.resume(args.resume, settings=_given(args))
        if run.status == "finished":
            print(f"{args.resume} finished at step {run.summary.get('steps')}: nothing to resume, nothing changed",
                  file=sys.stderr)
            _print_summaries([run.summary])
            return 0
    else:
        if args.out is None:
            raise ValueError("--out DIR is required: the run's records and checkpoints go there")
        run = Run(_config(args), args.out, overwrite=args.overwrite)
    summary = _drive(run, run.config.name)
    if run.dist.is_main:
        _print_summaries([summary])
    if summary.get("status") == "interrupted":
        print(f"interrupted: continue with `greencore train --resume {run.out}`", file=sys.stderr)
        return 130
    return 0


def _compare(args) -> int:
    from .training import Run
    from .plots import comparison_rows
    from .records import write_json_atomic

    if args.out is None:
        raise ValueError("--out DIR is required: each scheme's run goes into a sub-directory of it")
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    if not schemes:
        raise ValueError("--schemes is empty: list schemes like full,green:0.5,lora")
    configs = [_config(args, s) for s in schemes]
    labels = [c.scheme for c in configs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"--schemes lists {', '.join(twice)} more than once: each scheme's run needs its own folder")
    runs = [Run(c, args.out / c.scheme.replace(":", "-"), overwrite=args.overwrite) for c in configs]
    summaries = []
    for run in runs:
        summaries.append(_drive(run, run.config.name))
        if summaries[-1].get("status") == "interrupted":
            break
    if not runs[0].dist.is_main:
        return 0
    _print_summaries(summaries)
    rows = comparison_rows(summaries)
    write_json_atomic(args.out / "comparison.json", {"summaries": summaries, "rows": rows})
    (args.out / "comparison.md").write_text(_markdown(rows))
    return 0


def _app(args) -> int:
    from greencore_app.main import launch

    launch(host=args.host, port=args.port, share=args.share, runs_dir=args.runs_dir)
    return 0


def _print_summaries(summaries: list[dict]) -> None:
    from .plots import comparison_rows

    rows = comparison_rows(summaries)
    if rows:
        print()
        _print_table(tuple(rows[0]), [tuple(str(v) for v in r.values()) for r in rows])


def _markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _print_table(head: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def _write_json(path: Path, payload: dict) -> None:
    from .records import write_json_atomic

    write_json_atomic(path, payload)
    print(f"wrote {path}")


_COMMANDS = {"profile": _profile, "select": _select, "train": _train, "compare": _compare, "app": _app}

if __name__ == "__main__":
    raise SystemExit(main())
