"""Applying a plan to a model: peft LoRA with per-site ranks, then layerlens adapters and prefixes."""

import re

from peft import LoraConfig, TaskType, get_peft_model
from torch import nn

from layerlens.methods import attach_adapter, attach_prefix
from layerlens.planning.plan import Plan
from layerlens.sites import Site

HEAD = "classifier"
ATTACH = {
    "adapter": lambda site, size: attach_adapter(site.module, site.d_out, size),
    "prefix": lambda site, size: attach_prefix(site.module, size),
}


def peft_key(site: Site) -> str:
    """The site's module name from `encoder.layer` on, which matches it in any model wrapping the encoder."""
    return site.path[site.path.index("encoder.layer."):]


def lora_config(plan: Plan, sites: list[Site], alpha_ratio: float, dropout: float) -> LoraConfig | None:
    """A peft LoraConfig with one rank per adapted linear site (rank_pattern), or None if the plan has no LoRA."""
    by_name = {site.name: site for site in sites}
    ranks = {peft_key(by_name[c.site]): c.size for c in plan.adapted() if c.method == "lora"}
    if not ranks:
        return None
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        target_modules=sorted(ranks),
        r=max(ranks.values()),
        lora_alpha=alpha_ratio * max(ranks.values()),
        rank_pattern={re.escape(key): r for key, r in ranks.items()},
        alpha_pattern={re.escape(key): alpha_ratio * r for key, r in ranks.items()},
        lora_dropout=dropout,
    )


def apply_plan(model: nn.Module, sites: list[Site], plan: Plan, alpha_ratio: float, dropout: float) -> nn.Module:
    """Exactly the plan's modules trainable, plus the task head; everything else frozen."""
    config = lora_config(plan, sites, alpha_ratio, dropout)
    if config is None:
        model.requires_grad_(False)
        model.get_submodule(HEAD).requires_grad_(True)
    else:
        model = get_peft_model(model, config)  # freezes all but LoRA and the head: attach the rest after
    by_name = {site.name: site for site in sites}
    for choice in plan.adapted():
        if choice.method in ATTACH:
            ATTACH[choice.method](by_name[choice.site], choice.size)
    return model
