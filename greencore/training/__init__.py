"""Training: one loop for GreenTrainer and every baseline, with honest FLOPs accounting.

    config.py      `TrainConfig`, the single source of a run's settings
    setup.py       data, model (wrapped as the scheme asks), profile, optimizer and schedule -> `RunState`
    step.py        one training step and one re-selection, for one process and N ranks alike
    accounting.py  measured FLOPs per step and of full fine-tuning on the same batches
    evaluation.py  validation loss per epoch, generation and ROUGE at the end
    checkpoint.py  checkpoints and RNG state, for exact resume
    summary.py     `summary.json`
    loop.py        `Run` and `train`: the loop, top to bottom
    distributed.py launcher detection, collectives, sharding and DDP re-wrapping

Names are imported on first use, so `training.config` stays light (the CLI's parser needs no torch).
"""

import importlib

_EXPORTS = {"Run": ".loop", "train": ".loop", "TrainConfig": ".config", "PRECISIONS": ".config",
            "TrainingError": ".setup"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
