"""A choice of method per site: baseline.planner.menu offers several methods at a site kind, the allocator picks a
method and its size together, the plan builds and trains, and a plan or a menu that does not fit is refused in one
line. The methods through peft beside LoRA (DoRA, IA3, LoHa) are tested in test_peft_methods.py."""

import json
import re
from dataclasses import replace

import pytest
import torch
from torch import nn

from layerlens.errors import LayerLensError
from layerlens.lens.apply import apply_plan, check_plan_fits
from layerlens.lens.baseline import LayerLensBaseline
from layerlens.lens.sites import discover_sites
from layerlens.methods import Menu
from layerlens.models.backbones import RandomBertBackbone
from layerlens.pipeline import run_experiment
from layerlens.planning.choices import Choice, Plan
from layerlens.planning.costs import SiteSpec, Workload, option_costs
from layerlens.planning.planner import PlannerSettings, make_plan

WORKLOAD = Workload(batch_size=4, tokens_per_batch=100.0, seq_len=30.0, num_heads=2, flops_per_s=1e9)
# The adapter name each method's parameters carry (LoRA's peft model names its own "default").
ADAPTERS = {
    "lora": ".default",
    "dora": ".dora",
    "ia3": ".ia3",
    "loha": ".loha",
    "adapter": ".layerlens_adapter.",
    "prefix": ".layerlens_prefix.",
}


def tiny_bert() -> nn.Module:  # hidden 32, inner 64, 2 layers, 2 heads
    torch.manual_seed(0)
    return RandomBertBackbone(
        "tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    ).classifier(2)


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    ids = torch.randint(1, 100, (4, 7))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def menu(kinds: dict[str, list[str]], sizes=("lora", "adapter", "prefix", "dora", "ia3", "loha")) -> Menu:
    return Menu(tuple(sizes), {kind: tuple(methods) for kind, methods in kinds.items()})


def specs(sites, offered, utilities=None) -> list[SiteSpec]:
    """The sites as the planner sees them, each with the menu's other methods (as LayerLensBaseline.plan)."""
    baseline = LayerLensBaseline(
        sites=list(dict.fromkeys(s.kind for s in sites)),
        planner={"menu": {k: list(v) for k, v in offered.kinds.items()}},
    )
    utilities = utilities or [1.0] * len(sites)
    return [
        SiteSpec(s.name, s.layer, s.kind, s.method, s.d_in, s.d_out, u, baseline.others(s))
        for s, u in zip(sites, utilities)
    ]


def plan_of(sites, chosen: dict[str, tuple[str, int]], offered: Menu) -> Plan:
    """A plan of `chosen` (site -> method, size), priced as the planner prices it."""
    by_name = {s.name: s for s in specs(sites, offered)}
    choices = []
    for site in sites:
        method, size = chosen.get(site.name, ("none", 0))
        spec = by_name[site.name]
        choices.append(
            Choice(
                site.name,
                site.layer,
                site.kind,
                ",".join(spec.methods()),
                method,
                size,
                1.0,
                option_costs(spec.seen_by(method), method, size, WORKLOAD),
            )
        )
    return Plan(choices, {}, 0.0)


def owner(name: str, sites) -> str | None:
    """The site whose option added parameter `name` (a block site owns its linears' parameters), in the sites'
    order: a linear site before the block that holds it."""
    linears = {
        "ffn_block": ["intermediate.dense", "output.dense"],
        "attention": ["attention.self.query", "attention.self.key", "attention.self.value"],
    }
    for site in sites:
        paths = [f"{site.target}.", *(f"layer.{site.layer}.{p}." for p in linears.get(site.kind, []))]
        if any(p in name for p in paths):
            return site.name
    return None


def added_by_site(model, sites, before) -> dict[str, int]:
    """The parameters each site's option added (peft's copy of the head left out)."""
    counted: dict[str, int] = {}
    for name, p in model.named_parameters():
        if id(p) not in before and "modules_to_save" not in name:
            site = owner(name, sites)
            assert site is not None and p.requires_grad, name
            counted[site] = counted.get(site, 0) + p.numel()
    return counted


def test_a_block_takes_its_own_method_or_lora_on_its_linears_and_each_adds_what_it_costs():
    """The feed-forward block: a bottleneck adapter on its output, or LoRA on ffn_in and ffn_out, each of the
    site's rank; self-attention: a prefix, or LoRA on its query, key and value projections."""
    model = tiny_bert()
    offered = menu({"ffn_block": ["adapter", "lora"], "attention": ["prefix", "lora"]})
    sites = discover_sites(model, ["ffn_block", "attention"], offered)
    chosen = {
        "L0.ffn_block": ("lora", 2),
        "L1.ffn_block": ("adapter", 3),
        "L0.attention": ("prefix", 2),
        "L1.attention": ("lora", 1),
    }
    plan = plan_of(sites, chosen, offered)
    # LoRA of rank 2 on 32 -> 64 and 64 -> 32: 2 * 2 * 96; of rank 1 on three 32 x 32 projections: 3 * 64
    assert [c.costs.params for c in plan.adapted()] == [384, 2 * 2 * 32, 2 * 32 * 3 + 3 + 32, 192]
    before = {id(p) for p in model.parameters()}
    model = apply_plan(model, sites, plan, alpha_ratio=2.0, dropout=0.0, offered=offered)
    assert added_by_site(model, sites, before) == {c.site: c.costs.params for c in plan.adapted()}
    ranks = {
        name.split("encoder.layer.")[1].split(".lora_A")[0]: p.shape[0]
        for name, p in model.named_parameters()
        if ".lora_A." in name
    }
    assert ranks == {
        "0.intermediate.dense": 2,
        "0.output.dense": 2,
        "1.attention.self.query": 1,
        "1.attention.self.key": 1,
        "1.attention.self.value": 1,
    }


def test_each_planned_choice_records_the_methods_its_site_offered():
    """plan.json's `allowed` column (and the plot's legend) lists the site's own method, then the menu's others."""
    model = tiny_bert()
    offered = menu({"ffn_block": ["adapter", "lora"], "attention": ["prefix"]})
    sites = discover_sites(model, ["ffn_block", "attention"], offered)
    plan = make_plan(specs(sites, offered, [1.0, 2.0, 3.0, 4.0]), WORKLOAD, {"params": 2000.0}, PlannerSettings())
    assert [(c.site, c.allowed) for c in plan.choices] == [
        ("L0.ffn_block", "adapter,lora"),
        ("L0.attention", "prefix"),
        ("L1.ffn_block", "adapter,lora"),
        ("L1.attention", "prefix"),
    ]


def test_the_planner_picks_a_method_and_its_size_per_site_and_the_plan_trains(compose_run, tmp_path):
    """The feed-forward block offers an adapter or LoRA on its linears, sites valued alike (utility=uniform), LoRA's
    options valued twice an adapter's of the same size (method_value): within 289 parameters the best plan is LoRA of
    rank 1 (192 parameters, worth 2) at one block and an adapter of width 1 (97, worth 1) at the other. It is made,
    built and trained as any plan: profile -> plan -> build -> train -> test."""
    cfg = compose_run(
        "baseline=layerlens",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "baseline.profile.num_batches=4",
        "baseline.sites=[ffn_block]",
        "baseline.planner.utility=uniform",
        "budget.params_pct=null",
        "budget.params=289",
        "baseline.planner.sizes.lora=[1]",
        "baseline.planner.sizes.adapter=[1,2]",
        "+baseline.planner.menu.ffn_block=[adapter,lora]",
        "+baseline.planner.method_value.lora=2",
    )
    run_experiment(cfg, tmp_path / "run")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert sorted((site["method"], site["size"]) for site in plan["sites"]) == [("adapter", 1), ("lora", 1)]
    assert {site["allowed"] for site in plan["sites"]} == {"adapter,lora"}
    assert plan["totals"]["params"] == 289 and plan["objective"] == 3.0


@pytest.mark.parametrize(
    "planner,message",
    [
        (
            {"menu": {"magic": ["lora"]}},
            (
                "baseline.planner.menu: site kind 'magic' is accepted by no method (choose from: query, key, value, attn_out, "
                "ffn_in, ffn_out, attention, ffn_block, attn_block)"
            ),
        ),
        (
            {"menu": {"ffn_block": "lora"}},
            (
                "baseline.planner.menu.ffn_block must be a non-empty list of methods (choose from: lora, adapter, dora, loha), "
                "got 'lora'"
            ),
        ),
        (
            {"menu": {"ffn_block": []}},
            (
                "baseline.planner.menu.ffn_block must be a non-empty list of methods (choose from: lora, adapter, dora, loha), "
                "got []"
            ),
        ),
        (
            {"menu": {"query": ["adapter"]}},
            "baseline.planner.menu.query: method 'adapter' does not take query sites (choose from: lora, dora, ia3, loha)",
        ),
        (
            {"menu": {"attention": ["prefix", "ia3"]}},
            (
                "baseline.planner.menu.attention: method 'ia3' does not take attention sites (choose from: lora, prefix, dora, "
                "loha)"
            ),
        ),
        ({"menu": {"ffn_block": ["lora", "adapter", "lora"]}}, "baseline.planner.menu.ffn_block: lora is listed twice"),
        (
            {"menu": {"ffn_block": ["adapter", "lora"]}, "sizes": {"lora": [], "adapter": [1]}},
            "baseline.planner.menu.ffn_block offers lora, which baseline.planner.sizes.lora gives no sizes",
        ),
        (
            {"menu": {"ffn_block": 5}},
            (
                "baseline.planner.menu.ffn_block must be a non-empty list of methods (choose from: lora, adapter, dora, loha), "
                "got 5"
            ),
        ),
        ({"menu": [1]}, "baseline.planner.menu must map site kinds to lists of methods, got [1]"),
        ({"method_value": [1]}, "baseline.planner.method_value must map methods to positive numbers, got [1]"),
        (
            {"method_value": {"magic": 1.0}},
            "baseline.planner.method_value: unknown method 'magic' (choose from: lora, adapter, prefix, dora, ia3, loha)",
        ),
        ({"method_value": {"lora": 0}}, "baseline.planner.method_value.lora must be a positive number, got 0"),
    ],
)
def test_a_bad_menu_is_refused_in_one_line_naming_the_field(planner, message):
    with pytest.raises(LayerLensError, match="^" + re.escape(message) + "$"):
        PlannerSettings(**planner)


@pytest.mark.parametrize(
    "sites,menu_,message",
    [
        (
            ["query", "value"],
            {"ffn_block": ["adapter", "lora"]},
            "baseline.planner.menu.ffn_block: site kind ffn_block is not in baseline.sites (query, value)",
        ),
        (
            ["query", "attention"],
            {"attention": ["prefix", "lora"]},
            (
                "baseline.planner.menu.attention: lora on attention sites adapts their layer's query, key, value, which "
                "baseline.sites also lists (query): leave query out of baseline.sites or lora off the menu"
            ),
        ),
        (
            ["ffn_in", "ffn_out", "ffn_block"],
            {"ffn_block": ["lora"]},
            (
                "baseline.planner.menu.ffn_block: lora on ffn_block sites adapts their layer's ffn_in, ffn_out, which "
                "baseline.sites also lists (ffn_in): leave ffn_in and ffn_out out of baseline.sites or lora off the menu"
            ),
        ),
    ],
)
def test_a_menu_that_does_not_fit_the_sites_is_refused_in_one_line(sites, menu_, message):
    with pytest.raises(LayerLensError, match="^" + re.escape(message) + "$"):
        LayerLensBaseline(sites=sites, planner={"menu": menu_})
    # the block's linears are free where the sites leave them out
    LayerLensBaseline(
        sites=[k for k in sites if k in ("attention", "ffn_block")] or ["ffn_block"],
        planner={"menu": {k: v for k, v in menu_.items() if k in sites}},
    )


def test_a_plan_is_checked_against_the_menu_before_anything_is_attached():
    model = tiny_bert()
    offered = menu({"ffn_block": ["adapter", "lora"]})
    sites = discover_sites(model, ["query", "ffn_block"], offered)
    plan = plan_of(
        sites, {"L0.ffn_block": ("lora", 1), "L1.ffn_block": ("adapter", 2), "L0.query": ("lora", 2)}, offered
    )
    check_plan_fits(plan, sites, offered)  # as planned, it fits
    edits = {
        "plan: site L1.ffn_block (ffn_block) takes adapter or lora or none, got 'prefix'": (
            "L1.ffn_block",
            "prefix",
            1,
        ),
        "plan: site L0.ffn_block must have a size >= 1 for lora, got 0": ("L0.ffn_block", "lora", 0),
        "plan: site L0.query (query) takes lora or none, got 'adapter'": ("L0.query", "adapter", 1),
    }
    for message, (site, method, size) in edits.items():
        edited = replace(
            plan, choices=[replace(c, method=method, size=size) if c.site == site else c for c in plan.choices]
        )
        with pytest.raises(LayerLensError) as err:
            apply_plan(model, sites, edited, 2.0, 0.0, offered)
        assert str(err.value) == message
    # without its menu, the sites take their default methods only
    with pytest.raises(
        LayerLensError, match=r"^plan: site L0.ffn_block \(ffn_block\) takes adapter or none, got 'lora'$"
    ):
        check_plan_fits(plan, discover_sites(tiny_bert(), ["query", "ffn_block"]))
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen, nothing attached
