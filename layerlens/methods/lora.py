"""LoRA (through peft) on a linear site: a trained low-rank update B A, of rank r, beside the frozen weight."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from layerlens.methods.registry import Build, Method, register

if TYPE_CHECKING:
    from peft import LoraConfig
    from torch import nn

    from layerlens.planning.costs import SiteSpec, Workload
    from layerlens.sites import Site


def dims(module: nn.Module, profiled: tuple[nn.Module, ...]) -> tuple[int, int]:
    return module.in_features, module.out_features


def costs(site: SiteSpec, rank: int, w: Workload) -> tuple[float, float, float]:
    params = rank * (site.d_in + site.d_out)
    return params, 2.0 * params, w.tokens_per_batch * rank


def peft_config(chosen: list[tuple[Site, int]], build: Build) -> LoraConfig:
    """A peft LoraConfig with one rank per site (rank_pattern), each scaled alike (lora_alpha = ratio * rank).

    build.head: modules to train in full besides peft's own choice for sequence classification ("classifier").
    """
    from peft import LoraConfig, TaskType

    ranks = {site.target: rank for site, rank in chosen}
    ratio = build.lora_alpha_ratio
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        target_modules=sorted(ranks),
        r=max(ranks.values()),
        lora_alpha=ratio * max(ranks.values()),
        rank_pattern={re.escape(key): r for key, r in ranks.items()},
        alpha_pattern={re.escape(key): ratio * r for key, r in ranks.items()},
        lora_dropout=build.lora_dropout,
        modules_to_save=list(build.head) if build.head else None,
    )


def wrap(model: nn.Module, chosen: list[tuple[Site, int]], build: Build) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, peft_config(chosen, build))  # freezes all but LoRA and the head


LORA = register(Method(
    name="lora",
    kinds=("query", "key", "value", "attn_out", "ffn_in", "ffn_out"),
    size_name="rank",
    colour="tab:blue",
    dims=dims,
    costs=costs,
    wrap=wrap,
))
