"""Distributed fine-tuning, data-parallel (DDP) or sharded (FSDP2): launcher detection, the process group, data
sharding, and the few collectives GreenTrainer needs so that every rank trains exactly the same tensors.

A run is distributed when a launcher (`torchrun`, `python -m torch.distributed.run`, `accelerate launch --multi_gpu`)
starts it with `WORLD_SIZE > 1`; `GREENCORE_DISTRIBUTED=0` turns the detection off (every process then trains on its
own). `WORLD_SIZE=1` (for example `torchrun --nproc_per_node 1`) is an ordinary single-process run.

Decisions (the training loop and the Trainer callback build on them):
- Process group: created once per process from the launcher's environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
  `MASTER_PORT`), with gloo for CPU tensors and, where CUDA is available, nccl for CUDA tensors
  (`cpu:gloo,cuda:nccl`), and a timeout of `GREENCORE_DIST_TIMEOUT` seconds (default 1800), after which a rank left
  waiting in a collective fails instead of hanging. A group that already exists (created by the user, accelerate or
  the Trainer) is used as it is. On a GPU each rank uses `cuda:LOCAL_RANK`.
- Data (engine): `batch_size` is the *global* batch. Every rank builds the same global batches (same seeded
  shuffle as a single-process run) and trains on rows `rank, rank + W, ...` of each (DistributedSampler-style). The
  local loss is weighted by the rank's share of the global batch's label tokens, so the gradient DDP averages is the
  gradient of the global batch's mean token loss, exactly as one process computes it: a run on W processes is the
  same experiment as on one, with the same steps, schedule and records.
- Selection: importance gradients are all-reduced (each rank probes its shard of the probe batches), so every rank
  scores the same global-batch gradients; the selection is then broadcast from rank 0, so the tensors each rank
  trains are identical by construction.
- DDP and changing trainable sets: DDP builds its reducer from the parameters that require grad when it is
  constructed; a tensor frozen then and unfrozen later would never be all-reduced. The engine therefore re-wraps the
  model in a new DDP (`data_parallel`) whenever the trainable set changes, with `find_unused_parameters=False`, so each
  step communicates only the trainable tensors' gradients and pays no per-step graph search. The Trainer callback
  cannot re-wrap the Trainer's DDP; there the Trainer must use `ddp_find_unused_parameters=True` (its default for
  transformers models without activation checkpointing), whose reducer holds every parameter from the start.
- FSDP2 (`strategy="fsdp"`, `shard_model`): each transformer block (`layout.transformer_blocks`) and then the root
  module are `fully_shard`-ed, so every rank holds 1/W of each tensor, of its gradient and of its optimizer state.
  FSDP2 shards per parameter (DTensor), so frozen and trainable tensors share a block and a re-selection only
  changes `requires_grad`: no re-wrapping. A frozen tensor gets no gradient and no optimizer state on any rank.
  The data, the loss weighting and the selection are DDP's; importance reads the sharded gradients of a backward
  pass and sums each tensor's score over the ranks' shards (`importance.tensor_importance`). Every forward pass
  is a collective (the blocks' weights are all-gathered), so evaluation runs the same inputs on every rank instead
  of splitting them, and the full fine-tuning FLOPs each step is compared with are measured on a meta-device twin.
- Records: rank 0 alone writes (config, metrics, selections, summary, checkpoints) and reads the run directory; the
  other ranks never touch it, so it needs no shared file system except for `--resume` on rank 0's machine.
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import math
import os
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..importance import GradientReduce

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistInfo",
    "Replicas",
    "SINGLE",
    "all_gather_object",
    "all_reduce_sum",
    "any_rank",
    "batch_indices",
    "broadcast_module",
    "broadcast_object",
    "broadcast_tensors",
    "chunk",
    "current",
    "data_parallel",
    "gradient_reduce",
    "on_main",
    "resolve_device",
    "resolve_strategy",
    "setup",
    "shard",
    "shard_model",
    "weights_fingerprint",
]

DEFAULT_TIMEOUT_S = 1800
ENV_TIMEOUT = "GREENCORE_DIST_TIMEOUT"
ENV_SWITCH = "GREENCORE_DISTRIBUTED"
_BUCKET_ELEMENTS = 1 << 24  # gradients are all-reduced in flat float32 buckets of at most this many elements

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among `world_size` processes (world_size 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off")


def timeout_seconds() -> float:
    """The process-group timeout: `$GREENCORE_DIST_TIMEOUT` seconds, else DEFAULT_TIMEOUT_S."""
    value = os.environ.get(ENV_TIMEOUT, "").strip()
    if not value:
        return float(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"{ENV_TIMEOUT}={value!r} must be a positive number of seconds")
    return seconds


def current() -> DistInfo:
    """This process's place in the default process group (SINGLE when there is none, or detection is off)."""
    if _switched_off() or not dist.is_available() or not dist.is_initialized():
        return SINGLE
    world = dist.get_world_size()
    if world <= 1:
        return SINGLE
    return DistInfo(rank=dist.get_rank(), world_size=world, local_rank=_env_int("LOCAL_RANK", 0),
                    backend=str(dist.get_backend()))


def setup() -> DistInfo:
    """Join the launcher's process group when the environment asks for one (`WORLD_SIZE > 1`); idempotent.

    Creates the default group once per process (gloo for CPU tensors, plus nccl for CUDA tensors where CUDA is
    available) with the `GREENCORE_DIST_TIMEOUT` timeout, and makes `cuda:LOCAL_RANK` the current CUDA device.
    """
    if _switched_off():
        return SINGLE
    if dist.is_available() and dist.is_initialized():
        return current()
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world} asks for a distributed run, but this torch build has no "
                         "torch.distributed; run one process or install a torch with distributed support")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} asks for a distributed run but {', '.join(missing)} is not set: start "
                         "it with torchrun / accelerate launch, or set GREENCORE_DISTRIBUTED=0")
    local_rank = _env_int("LOCAL_RANK", 0)
    use_nccl = torch.cuda.is_available() and dist.is_nccl_available()
    if use_nccl and torch.cuda.device_count() > 0:
        torch.cuda.set_device(local_rank if local_rank < torch.cuda.device_count() else 0)
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_nccl else "gloo",
                            timeout=timedelta(seconds=timeout_seconds()))
    atexit.register(_shutdown)
    return current()


def _shutdown() -> None:
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # exiting anyway; a failed peer must not turn a clean exit into a hang or a traceback
        pass


def resolve_device(device: str | torch.device | None, info: DistInfo) -> torch.device:
    """The device this rank trains on: `models.resolve_device`, with `cuda` meaning `cuda:LOCAL_RANK` under DDP."""
    from ..models import resolve_device as resolve

    target = resolve(device)
    if not info.enabled or target.type != "cuda":
        return target
    count = torch.cuda.device_count()
    if info.local_rank < count:
        index = info.local_rank
    elif count == 1:  # one visible GPU per process (CUDA_VISIBLE_DEVICES set per rank)
        index = 0
    else:
        raise ValueError(f"LOCAL_RANK={info.local_rank} but only {count} GPUs are visible: start at most {count} "
                         "processes per node")
    if target.index is not None and target.index != index:
        raise ValueError(f"device {device!r} names one GPU for every rank; under a distributed launch each rank uses "
                         f"cuda:LOCAL_RANK (here cuda:{index}): pass --device cuda or auto")
    return torch.device("cuda", index)


def resolve_strategy(strategy: str, info: DistInfo) -> str:
    """What runs: "single" (one process), "ddp" or "fsdp", from `TrainConfig.strategy` and the launch.

    `auto` is fsdp under `accelerate launch` with an FSDP configuration (it sets `ACCELERATE_USE_FSDP`), else ddp.
    A strategy that contradicts the launch is refused: fsdp in a lone process, ddp under an accelerate FSDP
    configuration, and FSDP version 1 (greencore shards with FSDP2, whose per-parameter sharding lets frozen and
    trainable tensors share a block).
    """
    accelerate_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true", "yes")
    if accelerate_fsdp:
        version = os.environ.get("FSDP_VERSION", "1").strip()
        if version != "2":
            raise ValueError(f"accelerate launch is configured for FSDP version {version}; greencore shards with "
                             "FSDP2: set fsdp_version: 2 in the accelerate config (or --fsdp_version 2)")
        if strategy == "ddp":
            raise ValueError("--strategy ddp, but accelerate launch is configured for FSDP: use --strategy fsdp "
                             "(or auto), or launch without the FSDP configuration")
    if strategy == "fsdp" and not info.enabled:
        raise ValueError("--strategy fsdp shards the model over the ranks of a distributed launch, but this process "
                         "runs alone (WORLD_SIZE is 1 or unset): start it with torchrun --nproc_per_node N (or "
                         "accelerate launch with an FSDP2 configuration), or use --strategy auto")
    if not info.enabled:
        return "single"
    return "fsdp" if strategy == "fsdp" or (strategy == "auto" and accelerate_fsdp) else "ddp"


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2 over `model`, in place: each transformer block sharded, then the root (what is left: embeddings, final
    norm, head), and `generate` made a sharded forward method. The parameters become DTensors: build the optimizer
    after this call."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from ..layout import transformer_blocks

    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"--strategy fsdp shards each transformer block, but none was found in "
                         f"{type(model).__name__} (no _no_split_modules class inside a ModuleList): use --strategy ddp")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    if hasattr(model, "generate"):
        register_fsdp_forward_method(model, "generate")


# --------------------------------------------------------------------------------------------------- collectives


def _comm_device() -> torch.device:
    """Where small tensors go for a collective: the CPU under gloo, the current GPU under an nccl-only group."""
    backend = str(dist.get_backend()).lower()
    if "gloo" in backend or "mpi" in backend or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def all_reduce_sum(values: Sequence[float], info: DistInfo | None = None) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64); the values themselves without a process group."""
    info = info or current()
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def any_rank(flag: bool, info: DistInfo | None = None) -> bool:
    """True on every rank when `flag` is true on at least one."""
    return all_reduce_sum([1.0 if flag else 0.0], info)[0] > 0


def all_gather_object(obj: T, info: DistInfo | None = None) -> list[T]:
    """Every rank's `obj` (picklable), in rank order."""
    info = info or current()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, info: DistInfo | None = None, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank (the argument is ignored elsewhere)."""
    info = info or current()
    if not info.enabled:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T], info: DistInfo | None = None) -> T:
    """Run `fn` on rank 0 only and return its result on every rank; if it raises, every rank raises.

    Rank 0 re-raises its own exception; the others raise ValueError (for a ValueError, a user-facing problem) or
    RuntimeError with rank 0's message, so no rank is left waiting in the next collective.
    """
    info = info or current()
    if not info.enabled:
        return fn()
    result: Any = None
    error: BaseException | None = None
    if info.is_main:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - reported to every rank, then re-raised
            error = err
    message = None if error is None else (isinstance(error, ValueError), f"{type(error).__name__}: {error}")
    result, message = broadcast_object((result if error is None else None, message), info)
    if error is not None:
        raise error
    if message is not None:
        is_value_error, text = message
        raise (ValueError if is_value_error else RuntimeError)(f"rank 0 failed: {text}")
    return result


def broadcast_module(module: torch.nn.Module, info: DistInfo | None = None) -> None:
    """Copy rank 0's parameters and buffers into every rank's `module`, in place."""
    info = info or current()
    if not info.enabled:
        return
    with torch.no_grad():
        seen: set[int] = set()
        for t in [*module.parameters(), *module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                dist.broadcast(t.data, src=0)


def broadcast_tensors(tensors: Mapping[str, torch.Tensor] | None, info: DistInfo | None = None
                      ) -> dict[str, torch.Tensor]:
    """Rank 0's dict of tensors on every rank (CPU tensors; `tensors` is ignored on the other ranks)."""
    info = info or current()
    if not info.enabled:
        return dict(tensors or {})
    meta = broadcast_object([(k, tuple(v.shape), v.dtype) for k, v in (tensors or {}).items()]
                            if info.is_main else None, info)
    device = _comm_device()
    out = {}
    for name, shape, dtype in meta:
        t = tensors[name].to(device).contiguous() if info.is_main else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(t, src=0)
        out[name] = t.cpu()
    return out


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A digest of the exact bits of every parameter and buffer: equal on two ranks iff their weights are equal
    (up to a deliberate collision). Computed where the tensors live, in chunks, without copying the model."""
    h = hashlib.sha256()
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    seen: set[int] = set()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        flat = t.detach().reshape(-1)
        if flat.dtype.is_complex or flat.element_size() not in ints:
            h.update(name.encode() + flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
            continue
        bits = flat.contiguous().view(ints[flat.element_size()])
        sums = []
        for start in range(0, bits.numel(), _BUCKET_ELEMENTS):
            part = bits[start:start + _BUCKET_ELEMENTS].to(torch.int64)
            pos = torch.arange(start + 1, start + 1 + part.numel(), dtype=torch.int64, device=part.device)
            sums.append(torch.stack([part.sum(), (part * pos).sum(), (part ^ (pos * 0x9E3779B1)).sum()]))
        total = torch.stack(sums).sum(0).tolist() if sums else []
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{total};".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------- sharding


def batch_indices(n: int, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = True
                  ) -> list[list[int]]:
    """The global batches `data.batches(rows, batch_size=..., shuffle=..., seed=..., drop_last=...)` yields, as row
    indices: the same seeded shuffle and the same order."""
    order = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(order)
    stop = n - n % batch_size if drop_last else n
    return [order[start:start + batch_size] for start in range(0, stop, batch_size)]


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share of one global batch: items rank, rank + W, rank + 2W, ... (DistributedSampler order)."""
    return list(items[info.rank::info.world_size])


def chunk(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's contiguous part of `items` (concatenated in rank order they give `items` back)."""
    n, w = len(items), info.world_size
    return list(items[info.rank * n // w:(info.rank + 1) * n // w])


# ------------------------------------------------------------------------------------------------------ DDP


def data_parallel(model: torch.nn.Module, *, candidates: Iterable[str], device: torch.device
                  ) -> torch.nn.parallel.DistributedDataParallel | None:
    """A new DDP over the `candidates` that require grad now (None when none does).

    Call it again whenever the trainable set changes: DDP only all-reduces the parameters that required grad when it
    was built. Parameters outside `candidates` (never trained) are left out; buffers are not broadcast (transformer
    buffers are constants); weights are not re-broadcast (the ranks keep them identical, see `broadcast_module`).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    pool = set(candidates)
    params = dict(model.named_parameters())
    if not any(p.requires_grad for n, p in params.items() if n in pool):
        return None
    ignore = [n for n, p in params.items() if p.requires_grad and n not in pool]
    DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
    accepted = inspect.signature(DDP.__init__).parameters
    kwargs: dict[str, Any] = {"find_unused_parameters": False}
    kwargs["forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"] = False
    if "init_sync" in accepted:
        kwargs["init_sync"] = False
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **kwargs)


class Replicas:
    """The module a training step runs: the model itself in one process and under FSDP2 (sharded in place); under
    DDP a wrapper whose reducer covers exactly the tensors trained now.

    DDP all-reduces only the parameters that required grad when it was built, so a tensor unfrozen by a re-selection
    would silently stay unsynchronised under the old wrapper: the model is re-wrapped whenever the trainable set
    changes (a few collectives to check parameter shapes; no weights are sent). With a fixed trainable set the
    wrapper is reused. The run's `account` (an `accounting.FlopsAccount`) counts the re-wrapping in its counters'
    `ddp_wraps` and `ddp_wrap_seconds`.
    """

    def __init__(self, model: torch.nn.Module, candidates: Iterable[str], device: torch.device, info: DistInfo,
                 account: Any, sharded: bool = False) -> None:
        self.model, self.candidates, self.device, self.info = model, list(candidates), device, info
        self.account, self.sharded = account, sharded
        self._ddp: torch.nn.Module | None = None
        self._key: frozenset[str] | None = None

    def __call__(self) -> torch.nn.Module:
        if not self.info.enabled or self.sharded:
            return self.model
        key = frozenset(n for n, p in self.model.named_parameters() if p.requires_grad)
        if self._ddp is None or key != self._key:
            started = time.perf_counter()
            self._ddp = None  # the old wrapper's reducer and its hooks go first
            self._ddp = data_parallel(self.model, candidates=self.candidates, device=self.device)
            self._key = key
            self.account.counters.ddp_wraps += 1
            self.account.counters.ddp_wrap_seconds += time.perf_counter() - started
        return self._ddp if self._ddp is not None else self.model


# ----------------------------------------------------------------------------------------------- importance


def gradient_reduce(info: DistInfo) -> GradientReduce | None:
    """The `reduce` hook of `importance.tensor_importance` for this process group (None without one): probe
    gradients and the probe loss summed over all ranks, so every rank scores the global batches' gradients."""
    if not info.enabled:
        return None
    return _all_reduce_


def _all_reduce_(tensors: list[torch.Tensor], extra: torch.Tensor) -> float:
    """Sum `tensors` over the ranks in place (flat float32 buckets) and return the summed scalar `extra`."""
    groups: list[list[int]] = [[]]
    size = 0
    for i, t in enumerate(tensors):
        if groups[-1] and size + t.numel() > _BUCKET_ELEMENTS:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += t.numel()
    result = 0.0
    for b, group in enumerate(groups):
        parts = [tensors[i].reshape(-1).float() for i in group]
        if b == 0:
            parts.append(extra.reshape(1).to(parts[0].device if parts else extra.device))
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        offset = 0
        for i in group:
            n = tensors[i].numel()
            tensors[i].copy_(flat[offset:offset + n].view_as(tensors[i]))
            offset += n
        if b == 0:
            result = float(flat[-1])
    return result
