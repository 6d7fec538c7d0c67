"""Per-tensor FLOPs of one training step, derived from the model's real execution.

`profile_model` runs one forward pass under a dispatch-level tracer that sees exactly the aten ops
`FlopCounterMode` counts. For every op it records which trainable tensors each input depends on, so the
backward pass can be predicted for *any* set of trainable tensors by asking, op by op, which inputs autograd
would need a gradient for, and counting the FLOPs of that op's backward (replayed on the meta device under
`FlopCounterMode`, so the count is the same one a measurement gives).

From the same trace it derives the chain the selector optimises (docs/method.md, "The cost model"): tensors in backprop
order (by their use nearest the loss), `t_dw[k]` (weight-gradient FLOPs of tensor k over all its uses) and `t_dy[k]`
(activation-gradient FLOPs of the ops between tensor k's position and the next deeper tensor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from .flops import flop_counter, flop_registry, model_loss, rng_devices
from .layout import TensorLayout, tensor_layout
from .trainable import separate_uses, tied_aliases

__all__ = ["TensorProfile", "profile_model"]


@dataclass
class TensorProfile:
    """FLOPs of one training step, per trainable tensor, in backprop order (index 0 is nearest the loss).

    `reach[k]` is how many chain positions (from the loss) the activation gradient must pass when tensor k is the
    deepest one trained: k for a tensor used once; more for a tensor that is also used deeper in the network
    (a tied embedding / LM head), whose gradient from the deeper use needs the activation gradient down to there.
    """

    names: list[str]
    t_fp: float
    t_dy: np.ndarray
    t_dw: np.ndarray
    reach: np.ndarray
    layout: list[TensorLayout] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    _backward: Callable[[np.ndarray], float] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.t_dy = np.asarray(self.t_dy, dtype=np.float64)
        self.t_dw = np.asarray(self.t_dw, dtype=np.float64)
        self.reach = np.asarray(self.reach, dtype=np.int64)
        n = len(self.names)
        if not (len(self.t_dy) == len(self.t_dw) == len(self.reach) == n):
            raise ValueError(
                f"names, t_dy, t_dw and reach must have the same length, got "
                f"{n}, {len(self.t_dy)}, {len(self.t_dw)}, {len(self.reach)}"
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def full_flops(self) -> float:
        """FLOPs of one full fine-tuning step: t_fp + sum(t_dy) + sum(t_dw)."""
        return float(self.t_fp + self.t_dy.sum() + self.t_dw.sum())

    @property
    def min_rho(self) -> float:
        """Smallest feasible rho: a step that trains nothing still pays the forward pass."""
        return float(self.t_fp / self.full_flops)

    @property
    def min_training_rho(self) -> float:
        """Smallest rho at which a selection can train at least one tensor: the forward pass plus the cheapest
        single tensor's weight gradient and the activation gradients down to it (the chain model the selector
        optimises). Between `min_rho` and this, every selection is empty."""
        if not len(self):
            return 1.0
        return float((self.t_fp + self.single_tensor_costs().min()) / self.full_flops)

    def single_tensor_costs(self) -> np.ndarray:
        """Backward FLOPs (chain model) of training each tensor alone: its weight gradient plus the activation
        gradients down to it."""
        return self.t_dw + np.concatenate(([0.0], np.cumsum(self.t_dy)))[self.reach]

    def within_reach(self, rho: float) -> np.ndarray:
        """Which tensors a step within `rho` can train: alone, with the activation gradients down to it (the chain
        model). No selection at rho can hold any other tensor, so only these need an importance score."""
        return self.t_fp + self.single_tensor_costs() <= rho * self.full_flops * (1 + 1e-12)

    def deepest_trainable(self, rho: float) -> int:
        """The deepest chain position (index, in backprop order) whose tensor a step within `rho` can train
        (`within_reach`). -1 when rho trains nothing."""
        fits = np.nonzero(self.within_reach(rho))[0]
        return int(fits.max()) if len(fits) else -1

    def as_mask(self, trainable: Any) -> np.ndarray:
        """A boolean mask aligned with `names` from a mask, or from an iterable of tensor names."""
        return _as_mask(trainable, self.names)

    def chain_cost(self, mask: Any) -> float:
        """Backward FLOPs of a selection in the chain model the selector optimises (an upper bound)."""
        m = self.as_mask(mask)
        if not m.any():
            return 0.0
        deepest_reach = int(self.reach[m].max())
        return float(self.t_dw[m].sum() + self.t_dy[:deepest_reach].sum())

    def backward_flops(self, mask: Any) -> float:
        """Predicted backward FLOPs of a training step in which exactly the tensors in `mask` are trained.

        Uses the traced op graph when the profile has one (parallel branches are paid once, as autograd does),
        else the chain model.
        """
        m = self.as_mask(mask)
        if self._backward is None:
            return self.chain_cost(m)
        return float(self._backward(m))

    def step_flops(self, mask: Any) -> float:
        """Predicted FLOPs of a whole training step (forward plus backward) for a selection."""
        return float(self.t_fp + self.backward_flops(mask))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: names, t_fp, t_dy, t_dw, reach and layout."""
        return {
            "names": list(self.names),
            "t_fp": float(self.t_fp),
            "t_dy": self.t_dy.tolist(),
            "t_dw": self.t_dw.tolist(),
            "reach": self.reach.tolist(),
            "layout": [lay.to_dict() for lay in self.layout],
            "unused": list(self.unused),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorProfile":
        """The profile `to_dict` wrote, without its op graph: `backward_flops` then uses the chain model."""
        return cls(names=list(data["names"]), t_fp=float(data["t_fp"]), t_dy=data["t_dy"], t_dw=data["t_dw"],
                   reach=data["reach"], layout=[TensorLayout(**lay) for lay in data.get("layout", [])],
                   unused=list(data.get("unused", [])))


def _as_mask(trainable: Any, names: list[str]) -> np.ndarray:
    if isinstance(trainable, np.ndarray) and trainable.dtype == bool:
        if trainable.shape != (len(names),):
            raise ValueError(f"mask has shape {trainable.shape}, expected ({len(names)},) aligned with the profile")
        return trainable
    if isinstance(trainable, (list, tuple)) and trainable and all(isinstance(x, (bool, np.bool_)) for x in trainable):
        return _as_mask(np.asarray(trainable, dtype=bool), names)
    wanted = set(trainable)
    unknown = wanted - set(names)
    if unknown:
        raise ValueError(f"unknown tensor names (not in the profile): {sorted(unknown)[:5]}")
    return np.array([n in wanted for n in names], dtype=bool)


def profile_model(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    loss_fn: Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor] = model_loss,
    split_tied: bool = False,
) -> TensorProfile:
    """Profile one training step of `model` on `batch` (the dict the model is called with, including labels).

    `loss_fn(model, batch)` must compute the loss exactly as training will: greencore's engine uses `model_loss`,
    `transformers.Trainer` the model's own loss (`own_loss`), which costs more on causal LMs. The trainable tensors are the parameters that require grad now and that the forward pass uses. The model's
    weights, requires_grad flags and the global RNG are left as they were.

    With `split_tied`, a weight reached by several names (a tied embedding and LM head) gets one entry per name, each
    its module's use of the weight (`trainable.tied_aliases`): the head's use sits nearest the loss with the cost of
    its weight gradient alone, the embedding's use at the bottom. Training a subset of the entries is what
    `set_trainable` does with those names, and the prediction for any subset is exact as for any other tensors.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter that requires grad: nothing to profile")
    aliases = list(tied_aliases(model, [n for n, _ in params])) if split_tied else []
    constants = [t for t in model.parameters() if not t.requires_grad] + list(model.buffers())
    # each use traced through its own copy (a storage of its own), so the tracer tells the uses apart
    with separate_uses(model, aliases, make=lambda p: p.detach().clone()) as uses:
        tracer = _Tracer([p for _, p in params] + [uses[n] for n in aliases], constants)
        with torch.random.fork_rng(devices=rng_devices(model.parameters())), torch.enable_grad(), tracer:
            loss_fn(model, batch)  # traced; the loss itself is not needed
    return _build_profile(model, [n for n, _ in params] + aliases, tracer)


_ACT = 1  # bit 0 of a dependency mask: the value depends on the model's inputs; bit i+1: on trainable tensor i

_META_OPS = {
    torch.ops.aten.sym_is_contiguous.default,
    torch.ops.aten.is_contiguous.default,
    torch.ops.aten.is_contiguous.memory_format,
    torch.ops.aten.is_strides_like_format.default,
    torch.ops.aten.is_non_overlapping_and_dense.default,
    torch.ops.aten.size.default,
    torch.ops.aten.sym_size.default,
    torch.ops.aten.stride.default,
    torch.ops.aten.sym_stride.default,
    torch.ops.aten.storage_offset.default,
    torch.ops.aten.sym_storage_offset.default,
    torch.ops.aten.numel.default,
    torch.ops.aten.sym_numel.default,
    torch.ops.aten.dim.default,
    torch.ops.prim.layout.default,
}


@dataclass
class _Op:
    """One FLOP-counted op of the forward pass: what it needs to be replayed, and what its inputs depend on."""

    func: Any
    spec: Any
    leaves: tuple
    deps: tuple[int, ...]  # dependency mask of each tensor leaf, in leaf order
    time: int
    flops: int


class _Tracer(TorchDispatchMode):
    """Follows which trainable tensors every value depends on, at the level of the ops FlopCounterMode counts.

    It decomposes ops exactly as FlopCounterMode does, so it sees the same ops. Values are identified by their storage
    (`_address`, which works on the meta device too); every output is kept alive during the trace so no storage is
    reused.
    """

    def __init__(self, trainable: list[torch.Tensor], constants: list[torch.Tensor]) -> None:
        super().__init__()
        self.registry = flop_registry()
        self.spans: dict[int, list[tuple[int, int, int]]] = {}  # storage -> (start, end, dependency bit) in bytes
        for bit, tensors in [(0, constants)] + [(1 << (i + 1), [p]) for i, p in enumerate(trainable)]:
            for t in tensors:
                if t.numel():
                    storage, start = _address(t)
                    self.spans.setdefault(storage, []).append((start, start + t.numel() * t.element_size(), bit))
        self.values: dict[int, int] = {}
        self.keep: list[Any] = []
        self.ops: list[_Op] = []
        self.uses: list[tuple[int, int]] = []  # (time, dependency mask of the tensors entering the computation)
        self.time = 0

    def dep(self, t: torch.Tensor) -> int:
        if t.numel() == 0:
            return 0
        storage, offset = _address(t)
        for start, end, bit in self.spans.get(storage, ()):
            if start <= offset < end:
                return bit
        return self.values.get(storage, _ACT)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _META_OPS:
            return NotImplemented
        if isinstance(func, torch._ops.HigherOrderOperator):
            return NotImplemented
        if func not in self.registry and func is not torch.ops.prim.device.default:
            with self:
                r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _record(self, func, args, kwargs, out) -> None:
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        deps = tuple(self.dep(t) for t in tensors)
        combined = 0
        for d in deps:
            combined |= d
        if any(d & _ACT for d in deps):
            entering = 0
            for d in deps:
                if not d & _ACT:
                    entering |= d
            if entering:
                self.uses.append((self.time, entering))
        out_tensors = [x for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
        for t in out_tensors:
            if t.numel():
                self.values[_address(t)[0]] = combined
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                target = args[i] if i < len(args) else kwargs.get(arg.name)
                if isinstance(target, torch.Tensor) and target.numel():
                    key = _address(target)[0]
                    self.values[key] = self.values.get(key, 0) | combined
        self.keep.append(out)
        packet = func._overloadpacket
        if packet in self.registry:
            flops = self.registry[packet](*args, **kwargs, out_val=out)
            spec_leaves = tuple(_leaf_spec(x) for x in leaves)
            self.ops.append(_Op(func, spec, spec_leaves, deps, self.time, int(flops)))
        self.time += 1


def _address(t: torch.Tensor) -> tuple[int, int]:
    """Where a tensor's data lives: (its storage, the byte offset into it). Unlike `data_ptr()` this also tells
    tensors on the meta device apart, which have storages but no memory."""
    return t.untyped_storage()._cdata, t.storage_offset() * t.element_size()


@dataclass(frozen=True)
class _TensorSpec:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: str  # the device type the op ran on (a kernel such as CUDA's flash attention exists only there)


def _leaf_spec(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return _TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype, x.device.type)
    return x


def _replay_backward(op: _Op, needs_grad: tuple[bool, ...]) -> int:
    """FLOPs FlopCounterMode counts for this op's backward when the inputs flagged in `needs_grad` require grad:
    replayed on the meta device (no memory, no time), else on the device the op ran on."""
    ran_on = next((x.device for x in op.leaves if isinstance(x, _TensorSpec) and x.device != "meta"), "cpu")
    for device in ("meta", ran_on):
        try:
            return _replay_on(op, needs_grad, device)
        except (NotImplementedError, RuntimeError):
            if device == ran_on:
                raise
    raise AssertionError("unreachable")


def _replay_on(op: _Op, needs_grad: tuple[bool, ...], device: str) -> int:
    flags = iter(needs_grad)
    leaves = []
    for x in op.leaves:
        if isinstance(x, _TensorSpec):
            t = torch.empty_strided(x.shape, x.stride, dtype=x.dtype, device=device)
            if device != "meta":
                t.zero_()
            leaves.append(t.requires_grad_(next(flags) and t.is_floating_point()))
        else:
            leaves.append(x)
    args, kwargs = tree_unflatten(leaves, op.spec)
    with torch.enable_grad():
        out = op.func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
        if not outputs:
            return 0
        with flop_counter() as counter:
            torch.autograd.backward(outputs[:1], [torch.ones_like(outputs[0])])
    return int(counter.get_total_flops())


class _OpGraph:
    """Predicts backward FLOPs for any set of trainable tensors, op by op, as autograd would run them."""

    def __init__(self, ops: list[_Op], bit_of: list[int]) -> None:
        self.ops = ops
        self.bit_of = bit_of  # dependency bit of each tensor, in profile order
        self.cache: dict[tuple, int] = {}

    def cost(self, op: _Op, needs_grad: tuple[bool, ...]) -> int:
        if not any(needs_grad):
            return 0
        key = (op.func, op.leaves, needs_grad)
        if key not in self.cache:
            self.cache[key] = _replay_backward(op, needs_grad)
        return self.cache[key]

    def __call__(self, mask: np.ndarray) -> float:
        selected = 0
        for bit, m in zip(self.bit_of, mask):
            if m:
                selected |= bit
        return float(sum(self.cost(op, tuple(bool(d & selected) for d in op.deps)) for op in self.ops))


def _build_profile(model: torch.nn.Module, param_names: list[str], tracer: _Tracer) -> TensorProfile:
    first_use: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for time, entering in tracer.uses:
        for i in range(len(param_names)):
            if entering >> (i + 1) & 1:
                first_use.setdefault(i, time)
                last_use[i] = time
    used = sorted(last_use, key=lambda i: (-last_use[i], -i))
    unused = [param_names[i] for i in range(len(param_names)) if i not in last_use]
    position = {i: k for k, i in enumerate(used)}
    times = np.array([last_use[i] for i in used])  # non-increasing along the chain
    graph = _OpGraph(tracer.ops, [1 << (i + 1) for i in used])

    t_dw = np.zeros(len(used))
    t_dy = np.zeros(len(used))
    for op in tracer.ops:
        direct = 0
        for d in op.deps:
            if not d & _ACT:
                direct |= d
        for i in used:
            bit = 1 << (i + 1)
            if direct & bit:
                t_dw[position[i]] += graph.cost(op, tuple(bool(d & bit) and not d & _ACT for d in op.deps))
        flows = tuple(bool(d & _ACT) and d > _ACT for d in op.deps)
        if any(flows):
            later = np.nonzero(times >= op.time)[0]
            t_dy[later[-1] if len(later) else 0] += graph.cost(op, flows)

    reach = np.array([max(k, int((times > first_use[i]).sum())) for k, i in enumerate(used)], dtype=np.int64)
    names = [param_names[i] for i in used]
    return TensorProfile(
        names=names,
        t_fp=float(sum(op.flops for op in tracer.ops)),
        t_dy=t_dy,
        t_dw=t_dw,
        reach=reach,
        layout=tensor_layout(model, names),
        unused=unused,
        _backward=graph,
    )
