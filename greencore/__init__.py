"""greencore: GreenTrainer, adaptive backpropagation for fine-tuning under a FLOPs budget.

The method in four steps, one module each:
    profile    -> `profile_model`: per-tensor FLOPs of a training step, from the model's real execution (also of a
                  full-size model built from its config on the meta device: `meta_model`, no weights)
    importance -> `tensor_importance`: the loss reduction each tensor's update would bring
    select     -> `select_tensors`: the exact best set of tensors under a FLOPs budget rho
    train      -> `train` / `Run` (the `training` package): the training loop that re-selects as it goes

The definitions are in docs/method.md, the map of the code in ARCHITECTURE.md. Every public name is imported on first
use, so `import greencore.select` (numpy only) does not pay for torch, transformers or datasets.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DATASETS": ".data",
    "CLASSIFICATION_DATASETS": ".data",
    "load_summarization": ".data",
    "load_classification": ".data",
    "TASKS": ".tasks",
    "get_task": ".tasks",
    "Run": ".training",
    "TrainConfig": ".training",
    "PRECISIONS": ".training",
    "TrainingError": ".training",
    "train": ".training",
    "measure_training_flops": ".flops",
    "IMPORTANCE_METRICS": ".importance",
    "STRUCTURAL_METRICS": ".importance",
    "tensor_importance": ".importance",
    "ARCHITECTURES": ".meta",
    "load_config": ".meta",
    "meta_batch": ".meta",
    "meta_model": ".meta",
    "TensorLayout": ".layout",
    "tensor_layout": ".layout",
    "BUILTIN_MODELS": ".models",
    "load_model": ".models",
    "TensorProfile": ".profile",
    "profile_model": ".profile",
    "RunRecord": ".records",
    "list_runs": ".records",
    "load_run": ".records",
    "SCHEMES": ".schemes",
    "parse_scheme": ".schemes",
    "Selection": ".select",
    "select_tensors": ".select",
    "solve_selection": ".select",
    "GreenTrainerCallback": ".callback",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'greencore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
