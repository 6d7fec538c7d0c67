"""Mixed precision: the dtype the forward pass runs in, and the loss scaling fp16 needs.

Weights, gradients and optimizer moments stay fp32 (master weights). bf16 and fp16 run the forward pass through
`torch.autocast`, so the matrix products (and their backward) run in half precision. fp16's narrow range can
overflow, so its loss is scaled (`torch.amp.GradScaler`) and a step whose gradients are not finite is skipped and
counted. FLOPs are counted per operation from shapes, so the cost model is the same in every precision.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from .config import PRECISIONS

__all__ = ["PRECISIONS", "Precision", "autocast", "resolve_precision"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`precision` for `device`: auto is bf16 on a CUDA device that supports it, else fp32 (fp16 is opt-in, since
    it needs loss scaling); an explicit bf16 on a CUDA device without bf16 is a clear error."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r} (precision=) must be one of {', '.join(PRECISIONS)}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    if precision == "bf16" and device.type == "cuda" and not cuda_bf16:
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use fp16 "
                         "(with loss scaling) or fp32")
    return precision


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The context a forward pass runs in: autocast to bf16 / fp16 on `device`, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


class Precision:
    """One run's precision: `autocast()` around forward passes, `backward` and `step` around the update."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.name = resolve_precision(precision, device)
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "fp16" else None
        self.skipped_steps = 0

    def autocast(self) -> ContextManager:
        return autocast(self.name, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of `loss`, scaled first under fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def grad_scale(self) -> float:
        """What the gradients of the last backward are multiplied by (fp16's loss scale; 1 otherwise)."""
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], max_grad_norm: float) -> bool:
        """Clip (after unscaling) and step; under fp16 a step with inf/NaN gradients is skipped. Returns whether the
        optimizer stepped."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        stepped = self.scaler.get_scale() >= scale  # the scaler backs off exactly when it skipped the step
        self.skipped_steps += not stepped
        return stepped

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "skipped_steps": self.skipped_steps,
                "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
