"""LoRA (through peft) on a linear site: a trained low-rank update B A, of rank r, beside the frozen weight.

Where the menu offers it (baseline.planner.menu), also on a block: self-attention's query, key and value
projections, or the feed-forward block's two linears, each of the site's rank (layerlens/methods/linears.py).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, cast

from layerlens.methods import linears
from layerlens.methods.registry import Build, Method, register
from layerlens.models.families import LINEAR_KINDS

if TYPE_CHECKING:
    from peft import LoraConfig
    from torch import nn

    from layerlens.lens.sites import Site
    from layerlens.planning.costs import Workload


def linear_costs(d_in: int, d_out: int, rank: int, w: Workload) -> tuple[float, float, float]:
    """One linear's: A and B; their products per token; A's output kept for backward."""
    params = rank * (d_in + d_out)
    return params, 2.0 * params, w.tokens_per_batch * rank


def lora_config(ranks: dict[str, int], build: Build, **settings) -> LoraConfig:
    """A peft LoraConfig with one rank per module (rank_pattern), each scaled alike (lora_alpha = ratio * rank)."""
    from peft import LoraConfig

    ratio = build.lora_alpha_ratio
    return LoraConfig(
        target_modules=sorted(ranks),
        r=max(ranks.values()),
        lora_alpha=ratio * max(ranks.values()),  # type: ignore[arg-type]  # peft says int; a float scales alike
        rank_pattern={re.escape(key): r for key, r in ranks.items()},
        alpha_pattern={re.escape(key): ratio * r for key, r in ranks.items()},
        lora_dropout=build.lora_dropout,
        **settings,
    )


def peft_config(chosen: list[tuple[Site, int]], build: Build, model: nn.Module | None = None) -> LoraConfig:
    """peft's LoraConfig of LoRA at the chosen sites, one rank per site; `model` is needed only where a block site
    is chosen (its linears are named by the model's family).

    build.head: modules to train in full besides peft's own choice for sequence classification ("classifier").
    """
    from peft import TaskType

    from layerlens.models.decoders import peft_task_type

    if any(site.kind in linears.BLOCK_LINEARS for site, _ in chosen):
        ranks = {target: rank for target, _, rank in linears.targets(cast("nn.Module", model), chosen)}
    else:
        ranks = {site.target: rank for site, rank in chosen}
    return lora_config(
        ranks,
        build,
        task_type=peft_task_type(model) if model is not None else TaskType.SEQ_CLS,
        modules_to_save=list(build.head) if build.head else None,
    )


def wrap(model: nn.Module, chosen: list[tuple[Site, int]], build: Build) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, peft_config(chosen, build, model))  # freezes all but LoRA and the head


LORA = register(
    Method(
        name="lora",
        kinds=(*LINEAR_KINDS, *linears.BLOCK_LINEARS),
        default_kinds=LINEAR_KINDS,
        covers=linears.BLOCK_LINEARS,
        size_name="rank",
        colour="tab:blue",
        dims=linears.dims,
        costs=linears.summed(linear_costs),
        wrap=wrap,
    )
)
