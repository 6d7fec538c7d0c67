"""Which prompt for the offline default: the paper's `{source} TL;DR: {summary}` or smollm2's own chat template?

    python bench/bench_prompt.py        # writes results/prompt.json and results/prompt.md (about 10 minutes)

For each prompt (`TrainConfig.prompt`), on the app's demo run as it was when the prompt was chosen (`CHOSEN_ON`:
smollm2, green:0.5, 20 steps of 8 stdlib-tldr pairs, beam search of width 2) but scored on 50 validation pairs
(`--eval-examples`): validation ROUGE of the zero-shot model, then of the trained model at the end of the run. Runs are kept under `bench/runs/prompt-<prompt>/`; a finished one is read
back instead of trained again, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report, zero_shot_rouge  # noqa: E402

RUNS = Path(__file__).resolve().parent / "runs"
# the demo run of 2026-12-01 (TrainConfig.demo() then), on which the prompt was chosen; the demo has changed since
CHOSEN_ON = dict(scheme="green", rho=0.5, max_train_examples=160, max_steps=20, num_beams=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--eval-examples", type=int, default=50, help="validation (and test) pairs scored")
    args = parser.parse_args(argv)

    from greencore import TrainConfig, train

    results = {}
    for prompt in ("tldr", "chat"):
        config = TrainConfig(**CHOSEN_ON, model=args.model, prompt=prompt, max_eval_examples=args.eval_examples)
        out = RUNS / f"prompt-{prompt}"
        summary_file = out / "summary.json"
        done = summary_file.exists() and json.loads(summary_file.read_text()).get("status") == "finished"
        summary = json.loads(summary_file.read_text()) if done else train(config, out, overwrite=True)
        zero = zero_shot_rouge(config)
        results[prompt] = {"zero_shot": zero, "trained": {k.removeprefix("validation_"): v for k, v in summary.items()
                                                          if k.startswith("validation_rouge")},
                           "validation_loss": summary.get("val_loss"), "config": config.to_dict()}
    table = ["| prompt | zero-shot ROUGE-1 / 2 / L | after the demo run ROUGE-1 / 2 / L | validation loss |",
             "|---|---|---|---|"]
    for prompt, r in results.items():
        z, t = r["zero_shot"], r["trained"]
        table.append(f"| {prompt} | {z['rouge1']:.1f} / {z['rouge2']:.1f} / {z['rougeL']:.1f} | "
                     f"{t['rouge1']:.1f} / {t['rouge2']:.1f} / {t['rougeL']:.1f} | {r['validation_loss']:.3f} |")
    best = max(results, key=lambda p: results[p]["trained"]["rougeL"])
    note = f"\nHighest ROUGE-L after training: **{best}** (validation split, {args.model}).\n"
    return report("prompt", {"model": args.model, "results": results, "best_after_training": best},
                  "\n".join(table) + "\n" + note)


if __name__ == "__main__":
    raise SystemExit(main())
