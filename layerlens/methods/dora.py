"""DoRA (through peft): LoRA with a learned magnitude. The adapted weight is m * (W + B A) / ||W + B A||, the norm
taken per output (each row of W), m a trained vector, one per output, starting at ||W|| (so the model starts
unchanged); B A a LoRA update of rank r, scaled as LoRA's (lora_alpha = ratio * rank).

peft's DoRA is a LoRA setting of the whole adapter (LoraConfig(use_dora=True)), not of a module: in a plan that
also takes LoRA, DoRA's sites are a second LoRA adapter, "dora", injected beside LoRA's (linears.inject).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerlens.methods import linears
from layerlens.methods.lora import lora_config
from layerlens.methods.registry import Build, Method, register
from layerlens.models.families import LINEAR_KINDS

if TYPE_CHECKING:
    from torch import nn

    from layerlens.lens.sites import Site
    from layerlens.planning.costs import Workload

ADAPTER = "dora"


def linear_costs(d_in: int, d_out: int, rank: int, w: Workload) -> tuple[float, float, float]:
    """One linear's: LoRA's A and B and the magnitude; per token, LoRA's branch and, as peft trains with dropout on
    the branch's input, the frozen map again on that input (its output is rescaled by m / ||W + B A||); per batch,
    B A materialised for the norm (A and B applied to an identity: peft's get_lora_weight). Kept for backward:
    A's output, and the branch's and the frozen map's outputs, which the magnitude's gradient reads."""
    params = rank * (d_in + d_out) + d_out
    per_batch = 2.0 * d_in * rank * (d_in + d_out)
    flops = 2.0 * rank * (d_in + d_out) + 2.0 * d_in * d_out + per_batch / w.tokens_per_batch
    return params, flops, w.tokens_per_batch * (rank + 2 * d_out)


def wrap(model: nn.Module, chosen: list[tuple[Site, int]], build: Build) -> nn.Module:
    ranks = {target: rank for target, _, rank in linears.targets(model, chosen)}
    return linears.inject(model, lora_config(ranks, build, use_dora=True), ADAPTER, build)


DORA = register(
    Method(
        name="dora",
        kinds=(*LINEAR_KINDS, *linears.BLOCK_LINEARS),
        default_kinds=(),  # offered where baseline.planner.menu names it
        covers=linears.BLOCK_LINEARS,
        size_name="rank",
        colour="tab:cyan",
        dims=linears.dims,
        costs=linears.summed(linear_costs),
        wrap=wrap,
    )
)
