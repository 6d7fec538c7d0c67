"""greencore: GreenTrainer, adaptive backpropagation for fine-tuning under a FLOPs budget.

The method in four steps, one module each:
    profile    -> `profile_model`: per-tensor FLOPs of a training step, from the model's real execution
    importance -> `tensor_importance`: the loss reduction each tensor's update would bring
    select     -> `select_tensors`: the exact best set of tensors under a FLOPs budget rho
    train      -> the training engine that re-selects as it goes
"""

from .data import DATASETS, load_summarization
from .engine import Run, TrainConfig, TrainingError, train
from .flops import measure_training_flops
from .importance import IMPORTANCE_METRICS, tensor_importance
from .layout import TensorLayout, tensor_layout
from .models import BUILTIN_MODELS, load_model
from .profile import TensorProfile, profile_model
from .records import RunRecord, list_runs, load_run
from .select import Selection, select_tensors, solve_selection

__version__ = "0.1.0"


def __getattr__(name: str):
    # transformers.Trainer is slow to import: load the callback only when asked for
    if name == "GreenTrainerCallback":
        from .callback import GreenTrainerCallback

        return GreenTrainerCallback
    raise AttributeError(f"module 'greencore' has no attribute {name!r}")


__all__ = [
    "BUILTIN_MODELS",
    "DATASETS",
    "GreenTrainerCallback",
    "Run",
    "RunRecord",
    "TrainConfig",
    "TrainingError",
    "list_runs",
    "load_run",
    "load_summarization",
    "train",
    "IMPORTANCE_METRICS",
    "Selection",
    "TensorLayout",
    "TensorProfile",
    "load_model",
    "measure_training_flops",
    "profile_model",
    "select_tensors",
    "solve_selection",
    "tensor_importance",
    "tensor_layout",
]
