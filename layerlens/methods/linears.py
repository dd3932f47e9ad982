"""What the methods that adapt linear maps through peft share (lora, dora, ia3, loha): the linear site kinds, the
linears of a block site, their shapes for the costs, and how one more peft adapter joins a model that may carry
others already.

A block site (self-attention, the feed-forward block) adapted by a linear method adapts its linear maps, each with
the site's size: self-attention its query, key and value projections; the feed-forward block its two linears
(`ffn_in`, hidden -> inner, and `ffn_out`, inner -> hidden). Such a site's (d_in, d_out) is that of one of them:
self-attention a projection's (hidden, hidden), the feed-forward block `ffn_out`'s (inner, hidden).

The cost part (kinds, shapes) imports no torch; `inject` imports peft when a plan is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

from layerlens.models.families import model_family

if TYPE_CHECKING:
    from peft import PeftConfig
    from torch import nn

    from layerlens.lens.sites import Site
    from layerlens.methods.registry import Build
    from layerlens.planning.costs import SiteSpec, Workload

    Costs = tuple[float, float, float]

BLOCK_LINEARS = {"attention": ("query", "key", "value"), "ffn_block": ("ffn_in", "ffn_out")}


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear map: a torch Linear (or one wrapped by peft) or GPT-2's Conv1D (its weight transposed);
    None for any other module."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        linear = cast("nn.Linear", module)
        return linear.in_features, linear.out_features
    if hasattr(module, "nx") and hasattr(module, "nf"):  # transformers.pytorch_utils.Conv1D
        return cast(int, module.nx), cast(int, module.nf)
    return None


def block_output(block: nn.Module) -> tuple[int, int]:
    """(in, out) of the linear map a block ends with, its last registered one: BERT's attention.output.dense and
    output.dense, Llama's o_proj and down_proj, GPT-2's c_proj."""
    shapes = [shape for module in block.modules() if (shape := linear_shape(module)) is not None]
    return shapes[-1]


def dims(module: nn.Module, profiled: tuple[nn.Module, ...]) -> tuple[int, int]:
    """A linear site's (in, out); the feed-forward block's `ffn_out` (the linear it ends with); self-attention's key
    projection (profiled first, not the block itself)."""
    shape = linear_shape(module) or linear_shape(profiled[0])
    return shape if shape is not None else block_output(module)


def shapes(site: SiteSpec) -> list[tuple[int, int]]:
    """The (d_in, d_out) of each linear map an option at `site` adapts."""
    if site.kind == "attention":  # query hidden -> hidden; key and value (d_in, d_out): as wide as their heads
        return [(site.d_in, site.d_in), (site.d_in, site.d_out), (site.d_in, site.d_out)]
    if site.kind == "ffn_block":
        return [(site.d_out, site.d_in), (site.d_in, site.d_out)]  # ffn_in: hidden -> inner; ffn_out: back
    return [(site.d_in, site.d_out)]


def summed(linear_costs: Callable[[int, int, int, Workload], Costs]) -> Callable[[SiteSpec, int, Workload], Costs]:
    """A method's costs (Method.costs) from one linear's, `linear_costs(d_in, d_out, size, workload)`: their sum over
    the linears an option at the site adapts (summed_costs)."""
    return partial(summed_costs, linear_costs)


def summed_costs(
    linear_costs: Callable[[int, int, int, Workload], Costs], site: SiteSpec, size: int, w: Workload
) -> Costs:
    parts = [linear_costs(d_in, d_out, size, w) for d_in, d_out in shapes(site)]
    return tuple(sum(values) for values in zip(*parts))


def targets(model: nn.Module, chosen: list[tuple[Site, int]]) -> list[tuple[str, str, int]]:
    """(module name as peft matches it, its site kind, size) of every linear map the chosen sites adapt."""
    family = model_family(model)
    out = []
    for site, size in chosen:
        for kind in BLOCK_LINEARS.get(site.kind, ()):
            out.append((family.target(site.layer, kind), kind, size))
        if site.kind not in BLOCK_LINEARS:
            out.append((site.target, site.kind, size))
    return out


def inject(model: nn.Module, config: PeftConfig, adapter: str, build: Build) -> nn.Module:
    """`model` with peft adapter `adapter` (`config`: its target modules, none adapted yet) injected, and trained:
    what trained before still trains (the adapters of earlier methods, the head), and the new adapter; on a model
    no method has adapted yet, everything else is frozen but the head (build.head).

    peft's injection activates the new adapter in every layer of its type and every auxiliary module (the head's
    trainable copy) and freezes all but its own parameters: each existing layer's active adapters and each
    parameter's requires_grad are put back as they were. The adapter's config is not added to the model's
    peft_config (a PeftModel's, LoRA's own): LoRA's peft model stays as it was.
    """
    from peft import PeftModel, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    from layerlens.lens.apply import train_only

    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    if not any(isinstance(m, BaseTunerLayer) for m in inner.modules()):
        train_only(model, list(build.head))  # the first method to adapt this model
    trains = {id(p): p.requires_grad for p in model.parameters()}
    active = [
        (m, list(m.active_adapters))
        for m in model.modules()
        if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))
    ]
    configs = inner.__dict__.pop("peft_config", None)
    try:
        inject_adapter_in_model(config, inner, adapter_name=adapter)
    finally:
        if configs is None:
            inner.__dict__.pop("peft_config", None)
        else:
            inner.peft_config = configs
    for module, adapters in active:
        module.set_adapter(adapters)
    for p in model.parameters():
        p.requires_grad_(trains.get(id(p), True))
    return model
