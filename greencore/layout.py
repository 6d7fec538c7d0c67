"""Where each tensor sits in a transformer, for drawing per-layer heatmaps (display only, never used for costs), and
which modules are its transformer blocks (`transformer_blocks`: the units FSDP shards).

Blocks are found generically (the model's `_no_split_modules` classes inside a ModuleList); the encoder/decoder
stack comes from `get_encoder()` / `get_decoder()`. Tensor types are canonical names ("q.weight", "mlp_out.bias")
from a small alias table over module names, so the same row of a heatmap means the same thing across
architectures; anything the table does not know keeps its own attribute name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from torch import nn

__all__ = ["TensorLayout", "tensor_layout", "transformer_blocks"]


@dataclass
class TensorLayout:
    """Display position of one tensor: its stack, transformer block and canonical type."""

    name: str  # as in named_parameters()
    stack: str  # "encoder", "decoder" or "none"
    block: int | None  # index of the transformer block, None outside blocks
    type: str  # canonical tensor type with .weight/.bias, e.g. "q.weight", "mlp_out.bias", "embed.weight"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


# Module attribute names that say which sub-layer of a block a tensor belongs to (checked cross, attn, mlp).
_CROSS_NAMES = {"crossattention", "encoder_attn", "EncDecAttention", "cross_attn", "cross_attention"}
_ATTN_NAMES = {"attention", "self_attn", "self_attention", "SelfAttention", "attn"}
_MLP_NAMES = {"mlp", "DenseReluDense", "intermediate", "output", "feed_forward", "ffn"}

# Linear layers inside blocks. Projections ("q", "out", ...) get a "cross_" prefix in cross-attention and
# an "attn_" prefix for the output projection in self-attention.
_PROJECTIONS = {
    "q_proj": "q", "query": "q", "q": "q", "q_attn": "q",
    "k_proj": "k", "key": "k", "k": "k",
    "v_proj": "v", "value": "v", "v": "v",
    "c_attn": "qkv", "query_key_value": "qkv", "qkv_proj": "qkv", "Wqkv": "qkv",
    "out_proj": "out", "o_proj": "out", "o": "out",
}  # fmt: skip
_CROSS_PROJECTIONS = {"c_attn": "kv"}  # GPT-2 cross-attention: c_attn projects keys and values only
_MLP_LAYERS = {
    "fc1": "mlp_in", "up_proj": "mlp_in", "wi": "mlp_in", "wi_1": "mlp_in", "c_fc": "mlp_in",
    "dense_h_to_4h": "mlp_in",
    "gate_proj": "mlp_gate", "wi_0": "mlp_gate",
    "fc2": "mlp_out", "down_proj": "mlp_out", "wo": "mlp_out", "dense_4h_to_h": "mlp_out",
}  # fmt: skip
# Layers named only by position ("dense", "c_proj"): attention output, or MLP in/out by their parent module.
_GENERIC_LAYERS = {"dense", "c_proj"}
_MLP_IN_PARENTS = {"intermediate"}
# Norms inside blocks whose own name says which sub-layer they serve.
_BLOCK_NORMS = {
    "self_attn_layer_norm": "attn_norm", "input_layernorm": "attn_norm", "ln_1": "attn_norm",
    "attention_norm": "attn_norm",
    "encoder_attn_layer_norm": "cross_norm", "ln_cross_attn": "cross_norm",
    "final_layer_norm": "mlp_norm", "post_attention_layernorm": "mlp_norm", "ln_2": "mlp_norm",
    "ffn_norm": "mlp_norm",
}  # fmt: skip
# Outside blocks.
_EMBEDDINGS = {
    "position_embeddings": "pos_embed", "embed_positions": "pos_embed", "wpe": "pos_embed",
    "token_type_embeddings": "type_embed",
}  # fmt: skip
_EMBED_CONTEXT = {"embeddings", "embed", "word_embeddings_layernorm", "embed_layer_norm"}
_HEAD_CONTEXT = {"cls", "predictions", "transform", "lm_head"}
_HEAD_LAYERS = {"transform": "head_transform", "dense": "head_transform"}


def tensor_layout(model: nn.Module, names: Sequence[str]) -> list[TensorLayout]:
    """Stack, block and canonical type of each named parameter of `model`, in the order of `names`.

    Types are unique within one (stack, block): a later tensor that would repeat a type gets "#2", "#3", ...
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    blocks = _block_indices(model)
    stacks = _stack_prefixes(model, modules)
    seen: dict[tuple[str, int | None, str], int] = {}
    layouts = []
    for name in names:
        path = _resolve(model, modules, name)
        stack = next((label for prefix, label in stacks if name.startswith(prefix)), "none")
        block, depth = _split_at_block(path, modules, blocks)
        kind = _block_type(path, depth, modules) if block is not None else _outer_type(model, path, modules)
        key = (stack, block, kind)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            kind = f"{kind}#{seen[key]}"
        layouts.append(TensorLayout(name=name, stack=stack, block=block, type=kind))
    return layouts


def _resolve(model: nn.Module, modules: dict[str, nn.Module], name: str) -> list[str]:
    """Path components of a parameter name, checked to name a real parameter of the model."""
    owner, _, attr = name.rpartition(".")
    module = modules.get(owner)
    if module is None or not isinstance(getattr(module, attr, None), nn.Parameter):
        raise ValueError(
            f"{name!r} is not a parameter of {type(model).__name__}; pass names from model.named_parameters()"
        )
    return name.split(".")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, in module order (encoder's before decoder's); empty when none is found."""
    found = _block_indices(model)
    return [m for m in model.modules() if id(m) in found]


def _block_indices(model: nn.Module) -> dict[int, int]:
    """id(block module) -> its index in the parent ModuleList, for every transformer block of the model."""
    block_classes: set[str] = set()
    for module in model.modules():
        block_classes.update(getattr(module, "_no_split_modules", None) or ())
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    found = {
        id(child): index
        for lst in lists
        for index, child in enumerate(lst)
        if any(c.__name__ in block_classes for c in type(child).__mro__)  # FSDP2 subclasses a block it shards
    }
    if found:
        return found
    homogeneous = [lst for lst in lists if len({type(child) for child in lst}) == 1]
    if not homogeneous:
        return {}
    longest = max(len(lst) for lst in homogeneous)
    return {id(child): index for lst in homogeneous if len(lst) == longest for index, child in enumerate(lst)}


def _stack_prefixes(model: nn.Module, modules: dict[str, nn.Module]) -> list[tuple[str, str]]:
    """Name prefixes of the encoder and decoder stacks of an encoder-decoder model (empty for others)."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False):
        return []
    prefixes = []
    for label, getter in (("encoder", "get_encoder"), ("decoder", "get_decoder")):
        stack = getattr(model, getter)() if hasattr(model, getter) else None
        prefixes += [(f"{path}.", label) for path, module in modules.items() if module is stack and path]
    return prefixes


def _split_at_block(path: list[str], modules: dict[str, nn.Module], blocks: dict[int, int]) -> tuple[int | None, int]:
    """Index of the outermost block on the path and how many path components lead to it (None, 0: no block)."""
    for depth in range(1, len(path)):
        module = modules[".".join(path[:depth])]
        if id(module) in blocks:
            return blocks[id(module)], depth
    return None, 0


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "Norm" in type(module).__name__


def _context(ancestors: list[tuple[str, nn.Module]]) -> str | None:
    """Which sub-layer ("cross", "attn", "mlp") the ancestors inside a block place a tensor in."""
    classes = [type(module).__name__ for _, module in ancestors]
    names = [name for name, _ in ancestors]
    if any(n in _CROSS_NAMES for n in names) or any("CrossAttention" in c for c in classes):
        return "cross"
    if any(n in _ATTN_NAMES for n in names) or any("Attention" in c for c in classes):
        return "attn"
    if any(n in _MLP_NAMES for n in names) or any("MLP" in c or c.endswith("FF") for c in classes):
        return "mlp"
    return None


def _block_type(path: list[str], depth: int, modules: dict[str, nn.Module]) -> str:
    """Canonical type of a tensor inside the block that the first `depth` path components name."""
    param = path[-1]
    if depth == len(path) - 1:  # a parameter owned by the block module itself
        return param
    owners = [(path[i], modules[".".join(path[: i + 1])]) for i in range(depth, len(path) - 1)]
    leaf_name, leaf = owners[-1]
    context = _context(owners[:-1])
    if _is_norm(leaf):
        base = {"cross": "cross_norm", "attn": "attn_norm", "mlp": "mlp_norm"}.get(context or "")
        base = base or _BLOCK_NORMS.get(leaf_name, leaf_name)
    elif leaf_name == "relative_attention_bias":
        base = "rel_pos"
    elif leaf_name in _MLP_LAYERS:
        base = _MLP_LAYERS[leaf_name]
    elif context in ("attn", "cross") and (leaf_name in _PROJECTIONS or leaf_name in _GENERIC_LAYERS):
        role = _PROJECTIONS.get(leaf_name, "out")
        if context == "cross":
            base = "cross_" + _CROSS_PROJECTIONS.get(leaf_name, role)
        else:
            base = "attn_out" if role == "out" else role
    elif context == "mlp" and leaf_name in _GENERIC_LAYERS:
        parent = owners[-2][0] if len(owners) > 1 else ""
        base = "mlp_in" if parent in _MLP_IN_PARENTS else "mlp_out"
    else:
        base = leaf_name
    return f"{base}.{param}"


def _outer_type(model: nn.Module, path: list[str], modules: dict[str, nn.Module]) -> str:
    """Canonical type of a tensor outside every block: embeddings, final norms and the LM head."""
    *module_path, param = path
    if not module_path:  # a parameter held by the model itself
        return param
    owner = modules[".".join(module_path)]
    leaf_name = module_path[-1]
    ancestors = set(module_path[:-1])
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    # the head's parent may hold the head's bias itself (BERT's cls.predictions.bias, tied to decoder.bias)
    if output is not None and (owner is output or any(child is output for child in owner.children())):
        base = "lm_head"
    elif isinstance(owner, nn.Embedding):
        base = _EMBEDDINGS.get(leaf_name, "rel_pos" if leaf_name == "relative_attention_bias" else "embed")
    elif _is_norm(owner):
        if leaf_name in _EMBED_CONTEXT or ancestors & _EMBED_CONTEXT:
            base = "embed_norm"
        elif ancestors & _HEAD_CONTEXT:
            base = "head_norm"
        else:
            base = "norm"
    elif ancestors & _HEAD_CONTEXT and leaf_name in _HEAD_LAYERS:
        base = _HEAD_LAYERS[leaf_name]
    else:
        base = leaf_name
    return f"{base}.{param}"

