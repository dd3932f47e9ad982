"""Applying a plan to a model: each adapted site's method, as the registry (layerlens.methods) says it is applied."""

from collections.abc import Collection

from torch import nn

from layerlens.errors import LayerLensError
from layerlens.lens.sites import Site, encoder_layers
from layerlens.methods import METHODS, Build, Method, get_method, methods_for
from layerlens.models.decoders import generates
from layerlens.planning.choices import Plan


def task_head(model: nn.Module) -> list[str]:
    """The model's top-level modules with parameters outside the encoder: "classifier", and with DeBERTa also
    "pooler" (its checkpoints have none: a new layer that must train, as RoBERTa's classifier.dense does). A causal
    LM has none: its LM head is pretrained (often the embeddings themselves, tied) and stays frozen."""
    if generates(model):
        return []
    encoder = encoder_layers(model)[0].split(".")[0]
    return [name for name, child in model.named_children() if name != encoder and any(True for _ in child.parameters())]


def train_only(model: nn.Module, names: list[str]) -> nn.Module:
    """`model` with every weight frozen but those of its top-level modules `names`."""
    model.requires_grad_(False)
    for name in names:
        model.get_submodule(name).requires_grad_(True)
    return model


def placements(plan: Plan, sites: list[Site]) -> list[tuple[Method, Site, int]]:
    """Each adapted site of the plan, in its order: the method, the model's site and the size."""
    by_name = {site.name: site for site in sites}
    return [(get_method(c.method), by_name[c.site], c.size) for c in plan.adapted()]


def check_plan_fits(plan: Plan, sites: list[Site], offered: Collection[str] | None = None) -> None:
    """Raise, naming the first site at fault, unless the plan's sites are the model's and each adapted one has a
    method offered at its site (by `offered`, a Menu, as the sites were discovered: see methods_for) and a size in
    that method's range (a plan.json edited by hand, or made for another model or another menu)."""
    by_name = {site.name: site for site in sites}
    planned = [c.site for c in plan.choices]
    if sorted(planned) != sorted(by_name):
        extra = sorted(set(planned) - set(by_name)) or sorted(set(by_name) - set(planned))
        raise LayerLensError(f"plan: its sites are not the model's ({extra[0]!r} is in one and not the other)")
    for c in plan.adapted():
        site = by_name[c.site]
        names = list(dict.fromkeys([site.method, *(m.name for m in methods_for(site.kind, offered))]))
        if c.method not in names:
            raise LayerLensError(f"plan: site {c.site} ({c.kind}) takes {' or '.join(names)} or none, got {c.method!r}")
        method = get_method(c.method)
        if not method.allows(c.size):
            raise LayerLensError(
                f"plan: site {c.site} must have a size {method.size_range} for {c.method}, got {c.size!r}"
            )


def apply_plan(
    model: nn.Module,
    sites: list[Site],
    plan: Plan,
    alpha_ratio: float,
    dropout: float,
    offered: Collection[str] | None = None,
) -> nn.Module:
    """Exactly the plan's modules trainable, plus the task head; everything else frozen.

    The methods that wrap the model (peft's) are applied first, each at all its sites at once, in the order
    registered (LoRA's peft model first; the others join it: methods/linears.py); then the others, site by site in
    the plan's order (what they add is initialised in that order, from the seed). `offered`: the methods offered at
    each site (a Menu), as for check_plan_fits.
    """
    check_plan_fits(plan, sites, offered)
    head = task_head(model)
    build = Build(tuple(head), alpha_ratio, dropout)
    placed = placements(plan, sites)
    wrapped = False
    for method in METHODS.values():
        chosen = [(site, size) for m, site, size in placed if m is method]
        if method.wrap is not None and chosen:
            model, wrapped = method.wrap(model, chosen, build), True
    if not wrapped:
        train_only(model, head)
    for method, site, size in placed:
        if method.attach is not None:
            method.attach(site, size)
    return model
