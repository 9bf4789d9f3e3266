"""Finding the MoE blocks of a `transformers` model and where each one's routing can be read.

One registry of family adapters. The generic adapter covers every family whose experts module
is decorated with `transformers`' `use_experts_implementation`: that module receives
`(hidden_states, top_k_index, top_k_weights)`, the final routing whatever the router's algorithm,
so one forward pre-hook there sees it. Families outside that contract get a small adapter here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from moetrace.errors import InvalidArgumentError, NotAMoEModelError

#: (hook args, hook kwargs, module output or None) -> (top_k_index (T, k), top_k_weights (T, k) or None)
Capture = Callable[[tuple, dict, Any], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class MoEBlock:
    """One MoE block of a model and how to read its routing."""

    layer: int
    """Decoder layer index of the block."""
    name: str
    """Module path of the hooked module."""
    module: nn.Module
    """The module whose forward carries the routing."""
    hook: Literal["pre", "post"]
    """Read the routing before (`pre`, from the inputs) or after (`post`, from the output) its forward."""
    capture: Capture
    num_experts: int
    top_k: int
    expert_tensors: tuple[torch.Tensor, ...]
    """Tensors that hold all routed experts' weights of this block (leading axis or rows per expert)."""
    decoder_layer: nn.Module | None = None
    """The decoder layer that holds this block (its output feeds the next layer)."""
    pre_norm: nn.Module | None = None
    """The normalisation applied to the residual stream right before this block."""
    select: Callable[[torch.Tensor], torch.Tensor] | None = None
    """This block's router with its own selection logic: (tokens, hidden) -> (tokens, k) expert ids."""

    @property
    def expert_bytes(self) -> int:
        """Bytes of one routed expert's weights."""
        return sum(t.numel() * t.element_size() for t in self.expert_tensors) // self.num_experts


AdapterFn = Callable[[nn.Module], list[MoEBlock]]
ADAPTERS: dict[str, AdapterFn] = {}


def register_adapter(name: str) -> Callable[[AdapterFn], AdapterFn]:
    """Register a family adapter: a function from a model to its MoE blocks (empty if not its family)."""

    def decorator(fn: AdapterFn) -> AdapterFn:
        ADAPTERS[name] = fn
        return fn

    return decorator


def find_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """The MoE blocks of `model` in layer order, found by the first adapter that recognises it."""
    for fn in ADAPTERS.values():
        blocks = fn(model)
        if blocks:
            blocks.sort(key=lambda b: b.layer)
            layers = [b.layer for b in blocks]
            if len(set(layers)) != len(layers):
                raise NotAMoEModelError(f"found more than one routed-experts module in a decoder layer: {layers}")
            shapes = {(b.num_experts, b.top_k) for b in blocks}
            if len(shapes) != 1:
                raise NotAMoEModelError(f"MoE layers disagree on (num_experts, top_k): {sorted(shapes)}")
            return blocks
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    raise NotAMoEModelError(
        f"model (model_type '{model_type}') has no MoE layers that moetrace can trace; supported: families "
        f"whose experts follow transformers' experts interface, and {', '.join(n for n in ADAPTERS if n != 'experts-interface')}"
    )


def check_pregate(blocks: list[MoEBlock]) -> None:
    """Refuse pre-gating (the next MoE block's router applied to this block's decoder-layer output, as
    `record --pregate` stores and `run --policy ...+pregate` prefetches with) where a block lacks what it needs."""
    for block, following in zip(blocks, blocks[1:]):
        if block.decoder_layer is None or following.pre_norm is None or following.select is None:
            raise InvalidArgumentError(
                f"pre-gating is not supported for this model: the MoE block at layer {following.layer} has no "
                "router and norm that moetrace can call on its own"
            )


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|blocks|h|layer)\.(\d+)(?:\.|$)")


def decoder_layer_index(module_name: str) -> int:
    match = _LAYER_RE.search(module_name)
    if match is None:
        raise NotAMoEModelError(f"cannot tell which decoder layer module '{module_name}' belongs to")
    return int(match.group(1))


def decoder_layer(model: nn.Module, module_name: str) -> nn.Module:
    """The decoder layer module (`...layers.N`) that holds `module_name`."""
    match = _LAYER_RE.search(module_name)
    assert match is not None
    return model.get_submodule(module_name[: match.end(1)].lstrip("."))


def _router_selection(router: nn.Module, top_k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A router that returns its chosen expert ids among its outputs (transformers 5 top-k routers)."""

    def select(hidden: torch.Tensor) -> torch.Tensor:
        output = router(hidden)
        for item in output if isinstance(output, tuple) else (output,):
            if isinstance(item, torch.Tensor) and not item.is_floating_point() and item.shape[-1] == top_k:
                return item
        raise NotAMoEModelError(f"{type(router).__name__} does not return the expert ids it chooses")

    return select


def text_config(model: nn.Module) -> Any:
    config = getattr(model, "config")  # noqa: B009  (nn.Module's __getattr__ types it as a Tensor)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _experts_call_routing(args: tuple, kwargs: dict, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Routing from a call `experts(hidden_states, top_k_index, top_k_weights)`."""
    index = kwargs["top_k_index"] if "top_k_index" in kwargs else args[1]
    weights = kwargs["top_k_weights"] if "top_k_weights" in kwargs else (args[2] if len(args) > 2 else None)
    return index, weights


def _parent_top_k(model: nn.Module, name: str) -> int | None:
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    for holder in (parent, getattr(parent, "gate", None), getattr(parent, "router", None)):
        value = getattr(holder, "top_k", None)
        if isinstance(value, int):
            return value
    return None


def _stacked_expert_tensors(module: nn.Module, num_experts: int) -> tuple[torch.Tensor, ...]:
    return tuple(p for p in module.parameters(recurse=False) if p.dim() >= 2 and p.shape[0] == num_experts) or tuple(
        p for p in module.parameters() if p.dim() >= 1 and p.shape[0] == num_experts
    )


@register_adapter("experts-interface")
def _experts_interface(model: nn.Module) -> list[MoEBlock]:
    """Families whose experts module is decorated with `use_experts_implementation`."""
    config = text_config(model)
    blocks = []
    for name, module in model.named_modules():
        if not (hasattr(module, "_is_expert_parallel") and hasattr(module, "is_concatenated")):
            continue
        num_experts = getattr(module, "num_experts", None)
        top_k = _parent_top_k(model, name) or _config_int(config, "num_experts_per_tok", "moe_top_k", "top_k")
        if not isinstance(num_experts, int) or top_k is None:
            continue
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        router = getattr(parent, "gate", None) or getattr(parent, "router", None)
        layer = decoder_layer(model, name)
        blocks.append(
            MoEBlock(
                layer=decoder_layer_index(name),
                name=name,
                module=module,
                hook="pre",
                capture=_experts_call_routing,
                num_experts=num_experts,
                top_k=top_k,
                expert_tensors=_stacked_expert_tensors(module, num_experts),
                decoder_layer=layer,
                pre_norm=getattr(layer, "post_attention_layernorm", None),
                select=None if router is None else _router_selection(router, top_k),
            )
        )
    return blocks


@register_adapter("dbrx")
def _dbrx(model: nn.Module) -> list[MoEBlock]:
    """DBRX: its experts take the same call but are not decorated and pack experts as rows of w1, v1, w2."""
    blocks = []
    for name, module in model.named_modules():
        if type(module).__name__ != "DbrxExperts":
            continue
        ffn_config = text_config(model).ffn_config
        mlp = module.mlp
        ffn = model.get_submodule(name.rsplit(".", 1)[0])
        layer = decoder_layer(model, name)

        def select(hidden: torch.Tensor, ffn: nn.Module = ffn) -> torch.Tensor:
            return getattr(ffn, "route_tokens_to_experts")(ffn.get_submodule("router")(hidden))[1]  # noqa: B009

        blocks.append(
            MoEBlock(
                layer=decoder_layer_index(name),
                name=name,
                module=module,
                hook="pre",
                capture=_experts_call_routing,
                num_experts=module.num_experts,
                top_k=int(ffn_config.moe_top_k),
                expert_tensors=(mlp.w1, mlp.v1, mlp.w2),
                decoder_layer=layer,
                pre_norm=layer.get_submodule("norm_attn_norm.norm_2"),
                select=select,
            )
        )
    return blocks


def _llama4_routing(top_k: int) -> Capture:
    def capture(args: tuple, kwargs: dict, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Llama4Router returns (router_scores, router_logits): top-k of the logits, sigmoid of their values.
        router_logits = output[1]
        values, index = torch.topk(router_logits, top_k, dim=-1)
        return index, torch.sigmoid(values.float())

    return capture


@register_adapter("llama4")
def _llama4(model: nn.Module) -> list[MoEBlock]:
    """Llama 4: its router returns dense scores, and its experts see every token; read the router."""
    blocks = []
    for name, module in model.named_modules():
        if type(module).__name__ != "Llama4TextMoe":
            continue
        router, experts = module.router, module.experts
        layer = decoder_layer(model, name)

        def select(hidden: torch.Tensor, router: nn.Module = router) -> torch.Tensor:
            return torch.topk(router(hidden)[1], int(getattr(router, "top_k")), dim=-1).indices  # noqa: B009

        blocks.append(
            MoEBlock(
                layer=decoder_layer_index(name),
                name=f"{name}.router",
                module=router,
                hook="post",
                capture=_llama4_routing(router.top_k),
                num_experts=router.num_experts,
                top_k=router.top_k,
                expert_tensors=_stacked_expert_tensors(experts, router.num_experts),
                decoder_layer=layer,
                pre_norm=getattr(layer, "post_attention_layernorm", None),
                select=select,
            )
        )
    return blocks
