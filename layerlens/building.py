"""Applying a plan to a model: peft LoRA with per-site ranks, then layerlens adapters and prefixes."""

import re

from peft import LoraConfig, TaskType, get_peft_model
from torch import nn

from layerlens.errors import LayerLensError
from layerlens.methods import attach_adapter, attach_prefix
from layerlens.planning.plan import Plan
from layerlens.sites import Site, encoder_layers

ATTACH = {
    "adapter": lambda site, size: attach_adapter(site.module, site.d_out, size),
    "prefix": lambda site, size: attach_prefix(site.module, size),
}


def task_head(model: nn.Module) -> list[str]:
    """The model's top-level modules with parameters outside the encoder: "classifier", and with DeBERTa also
    "pooler" (its checkpoints have none: a new layer that must train, as RoBERTa's classifier.dense does)."""
    encoder = encoder_layers(model)[0].split(".")[0]
    return [name for name, child in model.named_children()
            if name != encoder and any(True for _ in child.parameters())]


def train_only(model: nn.Module, names: list[str]) -> nn.Module:
    """`model` with every weight frozen but those of its top-level modules `names`."""
    model.requires_grad_(False)
    for name in names:
        model.get_submodule(name).requires_grad_(True)
    return model


def lora_config(plan: Plan, sites: list[Site], alpha_ratio: float, dropout: float,
                head: list[str] | None = None) -> LoraConfig | None:
    """A peft LoraConfig with one rank per adapted linear site (rank_pattern), or None if the plan has no LoRA.

    `head`: modules to train in full besides peft's own choice for sequence classification ("classifier").
    """
    by_name = {site.name: site for site in sites}
    ranks = {by_name[c.site].target: c.size for c in plan.adapted() if c.method == "lora"}
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
        modules_to_save=list(head) if head else None,
    )


def check_plan_fits(plan: Plan, sites: list[Site]) -> None:
    """Raise, naming the first site at fault, unless the plan's sites are the model's and each adapted one has a
    method its kind accepts and a size of at least 1 (a plan.json edited by hand, or made for another model)."""
    by_name = {site.name: site for site in sites}
    planned = [c.site for c in plan.choices]
    if sorted(planned) != sorted(by_name):
        extra = sorted(set(planned) - set(by_name)) or sorted(set(by_name) - set(planned))
        raise LayerLensError(f"plan: its sites are not the model's ({extra[0]!r} is in one and not the other)")
    for c in plan.adapted():
        if c.method != by_name[c.site].method:
            raise LayerLensError(f"plan: site {c.site} ({c.kind}) takes {by_name[c.site].method} or none, "
                                 f"got {c.method!r}")
        if isinstance(c.size, bool) or not isinstance(c.size, int) or c.size < 1:
            raise LayerLensError(f"plan: site {c.site} must have a size >= 1 for {c.method}, got {c.size!r}")


def apply_plan(model: nn.Module, sites: list[Site], plan: Plan, alpha_ratio: float, dropout: float) -> nn.Module:
    """Exactly the plan's modules trainable, plus the task head; everything else frozen."""
    check_plan_fits(plan, sites)
    head = task_head(model)
    config = lora_config(plan, sites, alpha_ratio, dropout, head)
    if config is None:
        train_only(model, head)
    else:
        model = get_peft_model(model, config)  # freezes all but LoRA and the head: attach the rest after
    by_name = {site.name: site for site in sites}
    for choice in plan.adapted():
        if choice.method in ATTACH:
            ATTACH[choice.method](by_name[choice.site], choice.size)
    return model
