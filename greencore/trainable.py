"""Apply a selection to a model: the one place that decides what a frozen tensor keeps.

A frozen tensor holds no gradient and no optimizer state, so freezing saves memory as well as FLOPs. A tensor that is
selected again later starts from a clean optimizer state (fresh Adam moments and step count), as if it had never
been trained: its old moments describe gradients from weights that have since moved.

A tied weight (the input embedding shared with a causal LM's head) is reached by one name per module that uses it
(`model.embed_tokens.weight` and `lm_head.weight`). A profile made with `split_tied=True` has one entry per name, each
standing for that module's use: the weight is trained when any of its entries is selected, and a module whose entry
is not selected sees the weight as a constant, so the gradient comes from the selected uses alone (the head's use
without the activation gradient through the whole network down to the embedding).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterable, Iterator

import torch

__all__ = ["parameters_by_name", "separate_uses", "set_trainable", "tied_aliases", "trained_as"]

_CONSTANT_USES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[list[str], list]]" = weakref.WeakKeyDictionary()


def parameters_by_name(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every name by which a parameter is reached, a tied weight's other names included."""
    return dict(model.named_parameters(remove_duplicate=False))


def tied_aliases(model: torch.nn.Module, names: Iterable[str] | None = None) -> dict[str, str]:
    """Each other name of a parameter reached by several, mapped to the parameter's own name (the one
    `named_parameters()` gives): `{"lm_head.weight": "model.embed_tokens.weight"}` for a tied LM head. `names`
    limits it to the parameters of those own names."""
    own = {id(p): n for n, p in model.named_parameters()}
    wanted = None if names is None else set(names)
    return {n: own[id(p)] for n, p in parameters_by_name(model).items()
            if own[id(p)] != n and (wanted is None or own[id(p)] in wanted)}


def set_trainable(
    model: torch.nn.Module,
    names: Iterable[str],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    candidates: Iterable[str] | None = None,
) -> None:
    """Make exactly `names` (among `candidates`, by default every parameter) require grad.

    Candidates that are not in `names` are frozen: their `.grad` is dropped and so is their state in `optimizer`.
    Parameters outside `candidates` are not touched (for example the frozen base weights of a LoRA model). When the
    candidates name several uses of a tied weight, the weight trains if any of them is in `names`, and the modules of
    the others see it as a constant.
    """
    params = parameters_by_name(model)
    wanted = set(names)
    pool = {n for n, _ in model.named_parameters()} if candidates is None else set(candidates)
    unknown = (wanted | pool) - params.keys()
    if unknown:
        raise ValueError(f"not parameters of this model: {sorted(unknown)[:5]}")
    if not wanted <= pool:
        raise ValueError(f"cannot train tensors outside the candidates: {sorted(wanted - pool)[:5]}")
    trained = {id(params[n]) for n in wanted}
    for name in pool:
        p = params[name]
        train = id(p) in trained
        if not train:
            p.grad = None
            if optimizer is not None:
                optimizer.state.pop(p, None)
        p.requires_grad_(train)
    _constant_uses(model, [n for n in pool - wanted if id(params[n]) in trained])


@contextlib.contextmanager
def trained_as(model: torch.nn.Module, names: Iterable[str], uses: Iterable[str] = ()) -> Iterator[None]:
    """Inside, exactly `names` train (as `set_trainable` makes them, with no gradients yet) among every parameter and
    the tied weights' other names in `names` or `uses`; every parameter's `requires_grad` and `.grad`, and the
    constant uses, are as before afterwards. For measuring a step of another selection without changing the run's."""
    params = dict(model.named_parameters())
    names = set(names)
    saved = {n: (p.requires_grad, p.grad) for n, p in params.items()}
    constant, held = _CONSTANT_USES.get(model, ([], []))
    try:
        set_trainable(model, names, candidates=set(params) | (names | set(uses)) & set(tied_aliases(model)))
        for p in params.values():
            p.grad = None
        yield
    finally:
        for n, p in params.items():
            p.requires_grad_(saved[n][0])
            p.grad = saved[n][1]
        _constant_uses(model, constant)


def _constant_uses(model: torch.nn.Module, names: list[str]) -> None:
    """From now on the module of each name sees that parameter as a constant (replacing the earlier such names)."""
    _, handles = _CONSTANT_USES.pop(model, ([], []))
    for handle in handles:
        handle.remove()
    if names:
        _CONSTANT_USES[model] = (sorted(names), _substitute(model, {n: lambda p: p.detach() for n in names}))


def _substitute(model: torch.nn.Module, make: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> list:
    """Hooks that, while the module holding each named parameter runs, give it `make[name](parameter)` in its place
    and put the parameter back afterwards (also when the forward pass raises)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    handles = []
    for name, fn in make.items():
        owner, _, attr = name.rpartition(".")
        module = modules[owner]
        param = module._parameters[attr]

        def swap_in(mod, args, attr=attr, param=param, fn=fn):
            mod._parameters[attr] = fn(param)

        def swap_out(mod, args, out, attr=attr, param=param):
            mod._parameters[attr] = param

        handles += [module.register_forward_pre_hook(swap_in),
                    module.register_forward_hook(swap_out, always_call=True)]
    return handles


@contextlib.contextmanager
def separate_uses(model: torch.nn.Module, names: Iterable[str],
                  make: Callable[[torch.Tensor], torch.Tensor] = lambda p: p.detach()) -> Iterator[dict]:
    """Inside, each name in `names` that is another name of a tied weight (`tied_aliases`) reaches a tensor of its own,
    `make(parameter)` (a leaf, sharing the weight's values), so a gradient taken for it is its module's use alone,
    and the parameter's own name keeps its other uses. Yields {name: the tensor that name's module uses}. The
    constant uses `set_trainable` set are suspended inside and restored after."""
    params = parameters_by_name(model)
    aliases = [n for n in names if n in tied_aliases(model)]
    tensors = {n: make(params[n]) for n in aliases}
    constant, held = _CONSTANT_USES.pop(model, ([], []))
    for handle in held:
        handle.remove()
    handles = _substitute(model, {n: lambda p, t=t: t for n, t in tensors.items()})
    try:
        yield {n: tensors.get(n, params[n]) for n in names}
    finally:
        for handle in handles:
            handle.remove()
        _constant_uses(model, constant)
