"""The planner on pure numbers: option costs match the real modules, plans keep their budgets and checks."""

import json
from dataclasses import replace

import pytest
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertModel

from layerlens.building import apply_plan, check_plan_fits
from layerlens.budget import Budget, params_pct_for
from layerlens.errors import LayerLensError
from layerlens.methods import attach_adapter, attach_prefix
from layerlens.planning.costs import Depth, SiteSpec, Workload, option_costs
from layerlens.planning.plan import Plan
from layerlens.planning.planner import NoPlanFits, PlannerSettings, make_plan
from layerlens.sites import discover_sites

WORKLOAD = Workload(batch_size=8, tokens_per_batch=400.0, seq_len=60.0, num_heads=2, flops_per_s=1e10)


def tiny_bert():
    return BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                vocab_size=100), add_pooling_layer=False)


def spec(site, utility=1.0):
    return SiteSpec(site.name, site.layer, site.kind, site.method, site.d_in, site.d_out, utility)


def added_params(model, attach) -> int:
    model.requires_grad_(False)
    model = attach(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind,size", [("query", 3), ("ffn_in", 2), ("ffn_out", 5), ("attn_block", 4),
                                       ("ffn_block", 7), ("attention", 6)])
def test_option_params_equal_the_trainable_parameters_the_method_adds(kind, size):
    model = tiny_bert()
    site = discover_sites(model, [kind])[0]
    if site.method == "lora":
        def attach(m):
            return get_peft_model(m, LoraConfig(r=size, target_modules=[site.path]))
    elif site.method == "adapter":
        def attach(m):
            attach_adapter(site.module, site.d_out, size)
            return m
    else:
        def attach(m):
            attach_prefix(site.module, size)
            return m
    assert option_costs(spec(site), site.method, size, WORKLOAD).params == added_params(model, attach)


def test_costs_grow_with_size_and_none_is_free():
    site = spec(discover_sites(tiny_bert(), ["ffn_in"])[0])
    small, large = (option_costs(site, "lora", r, WORKLOAD) for r in (2, 8))
    assert all(getattr(large, k) > getattr(small, k) > 0 for k in ("params", "flops", "memory_mb", "latency_ms"))
    assert option_costs(site, "none", 0, WORKLOAD).as_dict() == dict.fromkeys(small.as_dict(), 0.0)


def planned(utilities, budgets, kinds=("query", "key", "value", "attn_out", "attn_block", "ffn_block", "attention"),
            **settings):
    sites = discover_sites(tiny_bert(), list(kinds))
    specs = [spec(s, u) for s, u in zip(sites, utilities)]
    return make_plan(specs, WORKLOAD, budgets, PlannerSettings(**settings))


def test_plan_keeps_every_budget_and_uses_the_parameter_budget():
    utilities = [1.0 + (7 * i % 11) for i in range(14)]
    budgets = {"params": 3000.0, "flops": 5000.0, "memory_mb": 0.2}
    plan = planned(utilities, budgets)
    assert plan.within_budgets()
    assert max(plan.utilisation().values()) > 0.9
    assert all(c.method in ("none", c.allowed) for c in plan.choices)


def test_more_useful_sites_of_a_kind_get_larger_sizes():
    utilities = [float(u) for u in range(1, 15)]
    plan = planned(utilities, {"params": 4000.0})
    for kind in ("query", "attn_block", "attention"):
        sizes = [c.size for c in plan.choices if c.kind == kind]
        assert sizes == sorted(sizes)  # utilities rise with the layer index within each kind
    assert all(share == 1.0 for share in plan.rank_utility_consistency().values())
    assert plan.rank_utility_spearman() > 0


def test_plan_json_round_trips_and_is_deterministic():
    plan = planned([float(u % 5 + 1) for u in range(14)], {"params": 2500.0})
    again = planned([float(u % 5 + 1) for u in range(14)], {"params": 2500.0})
    assert plan.to_json() == again.to_json()
    restored = Plan.from_json(plan.to_json())
    assert restored.to_json() == plan.to_json()
    data = json.loads(plan.to_json())
    assert {"sites", "totals", "utilisation", "method_diversity", "rank_utility_spearman",
            "rank_utility_consistency"} <= data.keys()


def test_consistency_counts_pairs_ordered_against_their_utilities():
    plan = planned([1.0] * 14, {"params": 2500.0})
    choices = [c for c in plan.choices if c.kind == "query"]
    swapped = [c.__class__(**{**c.__dict__, "method": "lora", "size": size, "utility": u})
               for c, size, u in zip(choices, (4, 2), (1.0, 2.0))]
    assert Plan(swapped, {}, 0.0).rank_utility_consistency() == {"lora": 0.0}


def test_an_unknown_budget_is_a_one_line_error_naming_it():
    with pytest.raises(LayerLensError, match="budget: unknown limit 'seconds'"):
        planned([1.0] * 14, {"seconds": 10.0})


@pytest.mark.parametrize("settings,field", [({"sizes": {"lora": [0]}}, "sizes.lora"),
                                            ({"sizes": {"magic": [1]}}, "sizes"),
                                            ({"sizes": {"lora": 4}}, "sizes.lora"),
                                            ({"sizes": [1, 2]}, "sizes"),
                                            ({"gain_exponent": 1.5}, "gain_exponent"),
                                            ({"gain_exponent": "half"}, "gain_exponent"),
                                            ({"flops_per_s": 0}, "flops_per_s")])
def test_bad_planner_settings_name_the_field(settings, field):
    with pytest.raises(LayerLensError, match=f"^baseline[.]planner[.]{field.replace('.', '[.]')}[ :]"):
        PlannerSettings(**settings)


@pytest.mark.parametrize("budgets,message", [
    ({"params": 10.0}, "budget.params must be >= 64 for any plan to fit (the cheapest option: lora of size 1 at "
                       "L0.query), got 10"),
    ({"params": 3000.0, "flops": 100.0}, "budget.flops must be >= 128 for any plan to fit (the cheapest option: lora "
                                         "of size 1 at L0.query), got 100"),
])
def test_a_budget_no_plan_meets_names_it_and_its_smallest_feasible_value(budgets, message):
    with pytest.raises(NoPlanFits) as err:
        planned([1.0] * 14, budgets)
    assert str(err.value) == message
    assert planned([1.0] * 14, {**budgets, err.value.name: err.value.needed}).adapted()  # that value is enough


def test_budgets_no_plan_meets_together_name_the_one_to_raise():
    # A prefix adds fewer parameters than an adapter but, with long padded batches, keeps more activations.
    workload = Workload(batch_size=8, tokens_per_batch=400.0, seq_len=1000.0, num_heads=2, flops_per_s=1e10)
    sites = [SiteSpec("L0.attn_block", 0, "attn_block", "adapter", 32, 32, 1.0),
             SiteSpec("L0.attention", 0, "attention", "prefix", 32, 32, 1.0)]
    adapter, prefix = (option_costs(site, site.method, 1, workload) for site in sites)
    assert prefix.params < adapter.params and prefix.memory_mb > adapter.memory_mb
    budgets = {"params": 80.0, "memory_mb": adapter.memory_mb}
    with pytest.raises(NoPlanFits, match=r"^budget[.]params must be >= 97 for any plan to fit within the other budgets "
                                         r"\(the cheapest option: adapter of size 1 at L0[.]attn_block\), got 80$"):
        make_plan(sites, workload, budgets, PlannerSettings())
    assert make_plan(sites, workload, {**budgets, "params": 97.0}, PlannerSettings()).adapted()


def test_sites_without_sizes_for_their_method_are_an_error():
    with pytest.raises(LayerLensError, match=r"^baseline[.]planner[.]sizes must list a size for lora "):
        planned([1.0] * 4, {}, kinds=("query", "value"), sizes={"lora": []})


@pytest.mark.parametrize("count,backbone", [(64, 1011426), (97, 12345), (1, 10**9), (65, 1000)])
def test_the_smallest_params_pct_printed_holds_the_count(count, backbone):
    pct = float(params_pct_for(count, backbone))
    assert Budget(params_pct=pct).params_limit(backbone) >= count
    assert Budget(params_pct=pct * 0.99).params_limit(backbone) < count


DEPTH = Depth(layers=2, layer_flops=2.0e5, epochs=4, cached=True)


def test_depth_fraction_prices_backpropagation_depth_and_the_cache():
    assert DEPTH.fraction(0) == pytest.approx(2 / 3)  # forward + input gradients, no weight gradients
    assert DEPTH.fraction(0) > DEPTH.fraction(1) > DEPTH.fraction(2) > 0
    uncached = Depth(layers=2, layer_flops=2.0e5, epochs=4, cached=False)
    assert uncached.fraction(1) > DEPTH.fraction(1) and uncached.fraction(0) == DEPTH.fraction(0)


def depth_planned(budgets):
    sites = discover_sites(tiny_bert(), ["query", "value", "ffn_block"])
    specs = [spec(s, 2.0 if s.layer == 0 else 1.0) for s in sites]  # layer 0 looks more useful
    return make_plan(specs, WORKLOAD, budgets, PlannerSettings(), DEPTH)


def test_a_training_time_budget_keeps_low_layers_frozen_and_the_plan_within_it():
    tight, loose = (depth_planned({"params": 2000.0, "train_time_pct": pct}) for pct in (60.0, 90.0))
    assert tight.lowest_adapted_layer() == 1 and tight.train_time_pct <= 60.0 and tight.within_budgets()
    assert loose.lowest_adapted_layer() == 0 and loose.train_time_pct <= 90.0 and loose.within_budgets()
    assert loose.objective > tight.objective
    assert Plan.from_json(tight.to_json()).train_time_pct == tight.train_time_pct
    assert tight.utilisation()["train_time_pct"] == pytest.approx(tight.train_time_pct / 60.0)


def test_a_training_time_budget_too_small_for_any_plan_names_the_smallest_that_fits():
    with pytest.raises(NoPlanFits, match=r"budget.train_time_pct must be >= [\d.]+ for any plan to fit "
                                         r"\(the cheapest option in training time: .* at L1\.\w+\), got 20") as err:
        depth_planned({"params": 2000.0, "train_time_pct": 20.0})
    assert depth_planned({"params": 2000.0, "train_time_pct": err.value.needed * 1.0001}).adapted()


def test_a_training_time_budget_needs_the_depth():
    sites = discover_sites(tiny_bert(), ["query"])
    with pytest.raises(LayerLensError, match="budget.train_time_pct needs the model's depth"):
        make_plan([spec(s) for s in sites], WORKLOAD, {"train_time_pct": 50.0}, PlannerSettings())


def test_a_plan_that_does_not_fit_the_model_is_refused_in_one_line_before_anything_is_attached():
    model = tiny_bert()
    sites = discover_sites(model)
    plan = make_plan([spec(s) for s in sites], WORKLOAD, {"params": 1e9}, PlannerSettings())
    check_plan_fits(plan, sites)  # as planned, it fits
    lora = next(i for i, c in enumerate(plan.choices) if c.method == "lora")
    name = plan.choices[lora].site
    edits = {
        f"plan: site {name} (query) takes lora or none, got 'adapter'": replace(plan.choices[lora], method="adapter"),
        f"plan: site {name} must have a size >= 1 for lora, got 0": replace(plan.choices[lora], size=0),
        "plan: its sites are not the model's ('L9.query' is in one and not the other)":
            replace(plan.choices[lora], site="L9.query"),
    }
    before = {n: p.clone() for n, p in model.named_parameters()}
    for message, choice in edits.items():
        edited = replace(plan, choices=[choice if i == lora else c for i, c in enumerate(plan.choices)])
        with pytest.raises(LayerLensError) as err:
            apply_plan(model, sites, edited, alpha_ratio=2.0, dropout=0.0)
        assert str(err.value) == message
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen, nothing attached
    assert {n for n, _ in model.named_parameters()} == set(before)
