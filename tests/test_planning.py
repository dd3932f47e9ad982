"""The planner on pure numbers: option costs match the real modules, plans keep their budgets and checks."""

import json
import math
import re
from dataclasses import asdict, replace

import pytest
from peft import LoraConfig, get_peft_model
from PIL import Image
from transformers import BertConfig, BertModel

from layerlens.budget import Budget, params_pct_for
from layerlens.errors import LayerLensError
from layerlens.lens.apply import apply_plan, check_plan_fits
from layerlens.lens.sites import discover_sites
from layerlens.methods.layers.adapter import attach_adapter
from layerlens.methods.layers.prefix import attach_prefix
from layerlens.models.backbones import RandomDecoderBackbone
from layerlens.planning.choices import Choice, Plan
from layerlens.planning.costs import Costs, Depth, SiteSpec, Workload, option_costs
from layerlens.planning.planner import NoPlanFits, PlannerSettings, check_feasible, make_plan
from layerlens.planning.plot import MAX_WIDTH_IN, plot_plan, ticks

WORKLOAD = Workload(batch_size=8, tokens_per_batch=400.0, seq_len=60.0, num_heads=2, flops_per_s=1e10)


def tiny_bert():
    return BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100),
        add_pooling_layer=False,
    )


def spec(site, utility=1.0):
    return SiteSpec(site.name, site.layer, site.kind, site.method, site.d_in, site.d_out, utility)


def added_params(model, attach) -> int:
    model.requires_grad_(False)
    model = attach(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "kind,size", [("query", 3), ("ffn_in", 2), ("ffn_out", 5), ("attn_block", 4), ("ffn_block", 7), ("attention", 6)]
)
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


def planned(
    utilities, budgets, kinds=("query", "key", "value", "attn_out", "attn_block", "ffn_block", "attention"), **settings
):
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
    assert {
        "sites",
        "totals",
        "utilisation",
        "method_diversity",
        "rank_utility_spearman",
        "rank_utility_consistency",
    } <= data.keys()


def test_consistency_counts_pairs_ordered_against_their_utilities():
    plan = planned([1.0] * 14, {"params": 2500.0})
    choices = [c for c in plan.choices if c.kind == "query"]
    swapped = [
        c.__class__(**{**c.__dict__, "method": "lora", "size": size, "utility": u})
        for c, size, u in zip(choices, (4, 2), (1.0, 2.0))
    ]
    assert Plan(swapped, {}, 0.0).rank_utility_consistency() == {"lora": 0.0}


def test_an_unknown_budget_is_a_one_line_error_naming_it():
    with pytest.raises(LayerLensError, match="budget: unknown limit 'seconds'"):
        planned([1.0] * 14, {"seconds": 10.0})


@pytest.mark.parametrize(
    "settings,field",
    [
        ({"sizes": {"lora": [0]}}, "sizes.lora"),
        ({"sizes": {"magic": [1]}}, "sizes"),
        ({"sizes": {"lora": 4}}, "sizes.lora"),
        ({"sizes": [1, 2]}, "sizes"),
        ({"gain_exponent": 1.5}, "gain_exponent"),
        ({"gain_exponent": "half"}, "gain_exponent"),
        ({"flops_per_s": 0}, "flops_per_s"),
    ],
)
def test_bad_planner_settings_name_the_field(settings, field):
    with pytest.raises(LayerLensError, match=f"^baseline[.]planner[.]{field.replace('.', '[.]')}[ :]"):
        PlannerSettings(**settings)


@pytest.mark.parametrize(
    "budgets,message",
    [
        (
            {"params": 10.0},
            "budget.params must be >= 64 for any plan to fit (the cheapest option: lora of size 1 at L0.query), got 10",
        ),
        (
            {"params": 3000.0, "flops": 100.0},
            "budget.flops must be >= 128 for any plan to fit (the cheapest option: lora "
            "of size 1 at L0.query), got 100",
        ),
    ],
)
def test_a_budget_no_plan_meets_names_it_and_its_smallest_feasible_value(budgets, message):
    with pytest.raises(NoPlanFits) as err:
        planned([1.0] * 14, budgets)
    assert str(err.value) == message
    assert planned([1.0] * 14, {**budgets, err.value.name: err.value.needed}).adapted()  # that value is enough


def test_budgets_no_plan_meets_together_name_the_one_to_raise():
    # A prefix adds fewer parameters than an adapter but, with long padded batches, keeps more activations.
    workload = Workload(batch_size=8, tokens_per_batch=400.0, seq_len=1000.0, num_heads=2, flops_per_s=1e10)
    sites = [
        SiteSpec("L0.attn_block", 0, "attn_block", "adapter", 32, 32, 1.0),
        SiteSpec("L0.attention", 0, "attention", "prefix", 32, 32, 1.0),
    ]
    adapter, prefix = (option_costs(site, site.method, 1, workload) for site in sites)
    assert prefix.params < adapter.params and prefix.memory_mb > adapter.memory_mb
    budgets = {"params": 80.0, "memory_mb": adapter.memory_mb}
    with pytest.raises(
        NoPlanFits,
        match=r"^budget[.]params must be >= 97 for any plan to fit within the other budgets "
        r"\(the cheapest option: adapter of size 1 at L0[.]attn_block\), got 80$",
    ):
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
    with pytest.raises(
        NoPlanFits,
        match=r"budget.train_time_pct must be >= [\d.]+ for any plan to fit "
        r"\(the cheapest option in training time: .* at L1\.\w+\), got 20",
    ) as err:
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
        "plan: its sites are not the model's ('L9.query' is in one and not the other)": replace(
            plan.choices[lora], site="L9.query"
        ),
    }
    before = {n: p.clone() for n, p in model.named_parameters()}
    for message, choice in edits.items():
        edited = replace(plan, choices=[choice if i == lora else c for i, c in enumerate(plan.choices)])
        with pytest.raises(LayerLensError) as err:
            apply_plan(model, sites, edited, alpha_ratio=2.0, dropout=0.0)
        assert str(err.value) == message
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen, nothing attached
    assert {n for n, _ in model.named_parameters()} == set(before)


# Found by mutation testing (experiments/mutation.py): what the tests above left free to change.


def hand_choice(site, layer, kind, method, size, utility, params):
    allowed = "adapter" if kind == "attn_block" else "lora"
    return Choice(
        site, layer, kind, allowed, method, size, utility, Costs(params, 2 * params, params / 1000, params / 100)
    )


# Two LoRA sites whose sizes follow their utilities, an adapter, and a site left out.
HAND_PLAN = Plan(
    [
        hand_choice("L0.query", 0, "query", "lora", 2, 1.0, 100.0),
        hand_choice("L1.query", 1, "query", "lora", 4, 3.0, 200.0),
        hand_choice("L1.attn_block", 1, "attn_block", "adapter", 2, 2.0, 150.0),
        hand_choice("L0.value", 0, "value", "none", 0, 0.5, 0.0),
    ],
    {"params": 500.0},
    objective=7.5,
    train_time_pct=80.0,
)


def test_a_plans_metrics_by_hand():
    # Spearman of utilities [1, 3, 2, 0.5] (ranks 2, 4, 3, 1) and sizes [2, 4, 2, 0] (ranks 2.5, 4, 2.5, 1):
    # the ranks' deviations from 2.5 give 4.5 / sqrt(5 * 4.5) = 3 / sqrt(10).
    assert HAND_PLAN.metrics() == pytest.approx(
        {
            "plan/params": 450.0,
            "plan/flops": 900.0,
            "plan/memory_mb": 0.45,
            "plan/latency_ms": 4.5,
            "plan/train_time_pct": 80.0,
            "plan/utilisation/params": 0.9,
            "plan/sites/lora": 2.0,
            "plan/sites/adapter": 1.0,
            "plan/consistency/lora": 1.0,
            "plan/consistency/adapter": 1.0,  # one ordered pair; no pair at all
            "plan/method_diversity": 2.0,
            "plan/rank_utility_spearman": 3 / math.sqrt(10),
            "plan/objective": 7.5,
            "plan/lowest_adapted_layer": 0.0,
        }
    )
    data = json.loads(HAND_PLAN.to_json())
    assert data["lowest_adapted_layer"] == 0 and data["train_time_pct"] == 80.0
    assert data["method_counts"] == {"lora": 2, "adapter": 1} and data["method_diversity"] == 2
    assert data["rank_utility_consistency"] == {"lora": 1.0, "adapter": 1.0}


def test_a_plan_that_adapts_nothing_has_no_lowest_layer_and_no_rank_correlation():
    plan = Plan([hand_choice("L0.query", 0, "query", "none", 0, u, 0.0) for u in (1.0, 2.0)], {"params": 1.0}, 0.0)
    assert plan.lowest_adapted_layer() is None
    assert math.isnan(plan.rank_utility_spearman())  # every size 0: no ranking to correlate
    metrics = plan.metrics()
    assert "plan/lowest_adapted_layer" not in metrics and metrics["plan/method_diversity"] == 0.0
    assert replace(plan, budgets={"params": 0.0}).within_budgets()  # nothing adapted fits even a budget of 0
    two_sizes = Plan(
        [
            hand_choice("L0.query", 0, "query", "lora", 2, 1.0, 1.0),
            hand_choice("L1.query", 1, "query", "none", 0, 0.5, 0.0),
        ],
        {},
        0.0,
    )
    assert two_sizes.rank_utility_spearman() == pytest.approx(1.0)  # two sizes are enough to rank


def test_within_budgets_allows_the_relative_tolerance_and_no_more():
    def costing(params, limit=100.0):
        return Plan([hand_choice("L0.query", 0, "query", "lora", 1, 1.0, params)], {"params": limit}, 1.0)

    assert costing(100.0).within_budgets()  # at the limit
    assert costing(100.0 * (1 + 5e-10)).within_budgets()  # within the default tolerance, 1e-9
    assert not costing(100.0 * (1 + 2e-9)).within_budgets()
    assert not costing(150.0).within_budgets()
    assert costing(150.0).within_budgets(rel_tol=0.5)


def test_an_options_value_is_its_sites_utility_times_its_size_to_the_gain_exponent():
    utilities = [float(u % 5 + 1) for u in range(14)]
    for exponent in (0.5, 1.0):
        plan = planned(utilities, {"params": 2500.0}, gain_exponent=exponent)
        assert plan.adapted()
        assert plan.objective == pytest.approx(sum(c.utility * c.size**exponent for c in plan.adapted()))


def test_a_method_missing_from_the_sizes_leaves_its_sites_out():
    plan = planned([1.0] * 4, {"params": 1e9}, kinds=("query", "attn_block"), sizes={"lora": [2]})
    assert {(c.kind, c.method, c.size) for c in plan.choices} == {("query", "lora", 2), ("attn_block", "none", 0)}


def test_an_unknown_budget_lists_every_budget_there_is():
    with pytest.raises(
        LayerLensError,
        match=r"^budget: unknown limit 'seconds' \(choose from: params, flops, "
        r"memory_mb, latency_ms, train_time_pct\)$",
    ):
        planned([1.0] * 14, {"seconds": 10.0})


def test_a_budget_the_allocator_refuses_is_named_as_the_user_wrote_it():
    with pytest.raises(LayerLensError, match=r"^planner: .*budget\.params"):
        planned([1.0] * 14, {"params": math.inf})


def test_no_plan_fits_carries_the_budget_its_limit_the_value_needed_and_whether_others_bind():
    with pytest.raises(NoPlanFits) as err:
        planned([1.0] * 14, {"params": 10.0})
    assert (err.value.name, err.value.limit, err.value.needed, err.value.within_others) == ("params", 10.0, 64.0, False)


def options_costing(*costs):
    """One site per (params, flops, memory_mb), its options none and lora of size 1 at that cost (no latency)."""
    sites = [SiteSpec(f"S{i}", i, "query", "lora", 4, 4, 1.0) for i in range(len(costs))]
    return (
        sites,
        [[("none", 0), ("lora", 1)] for _ in costs],
        [[Costs(0.0, 0.0, 0.0, 0.0), Costs(*map(float, c), 0.0)] for c in costs],
    )


def test_the_budget_to_raise_is_found_past_one_that_no_option_can_meet_within_the_others():
    # S0 is too large in params, S1 in memory; flops, checked first, binds neither, and no option meets both others.
    sites, options, costs = options_costing((10, 1, 1), (1, 1, 10))
    with pytest.raises(
        NoPlanFits,
        match=r"^budget\.params must be >= 10 for any plan to fit within the other "
        r"budgets \(the cheapest option: lora of size 1 at S0\), got 5$",
    ) as err:
        check_feasible(sites, options, costs, {"flops": 100.0, "params": 5.0, "memory_mb": 5.0})
    assert (err.value.name, err.value.limit, err.value.needed, err.value.within_others) == ("params", 5.0, 10.0, True)


def test_budgets_each_option_meets_only_one_of_are_refused_together():
    sites, options, costs = options_costing((1, 10, 10), (10, 1, 10), (10, 10, 1))  # each cheap in one budget
    with pytest.raises(
        LayerLensError,
        match=r"^budget: no site option fits budget\.params, budget\.flops, "
        r"budget\.memory_mb together; raise several of them$",
    ) as err:
        check_feasible(sites, options, costs, {"params": 1.0, "flops": 1.0, "memory_mb": 1.0})
    assert not isinstance(err.value, NoPlanFits)  # no single budget to name
    check_feasible(sites, options, costs, {"params": 1.0, "latency_ms": 0.0})  # a cost of 0 meets a budget of 0


def test_the_training_time_named_as_needed_is_the_smallest_that_fits():
    with pytest.raises(NoPlanFits) as err:
        depth_planned({"params": 2000.0, "train_time_pct": 20.0})
    assert (err.value.name, err.value.limit, err.value.within_others) == ("train_time_pct", 20.0, False)
    with pytest.raises(NoPlanFits):
        depth_planned({"params": 2000.0, "train_time_pct": err.value.needed * 0.999})
    assert depth_planned({"params": 2000.0, "train_time_pct": err.value.needed * 1.0001}).adapted()
    # a latency budget, generous, changes nothing of that
    with pytest.raises(NoPlanFits) as again:
        depth_planned({"params": 2000.0, "latency_ms": 1e9, "train_time_pct": 20.0})
    assert (again.value.name, again.value.needed) == ("train_time_pct", err.value.needed)


@pytest.mark.parametrize("spare_pct", [0.0, 0.01])  # 0: exactly the time of backpropagation to layer 1 (37.5%)
def test_with_a_training_time_budget_another_budget_that_binds_is_the_one_named(spare_pct):
    with pytest.raises(NoPlanFits, match=r"^budget\.params must be >= 64 for any plan to fit ") as err:
        depth_planned({"params": 10.0, "train_time_pct": 99.0})
    assert err.value.name == "params"
    # Time enough for backpropagation to layer 1 but not for any option there, and a latency budget too small for
    # any: the latency budget is the one named.
    cheapest_ms = min(
        option_costs(spec(s), s.method, 1, WORKLOAD).latency_ms
        for s in discover_sites(tiny_bert(), ["query", "value", "ffn_block"])
        if s.layer == 1
    )
    limit = 100 * DEPTH.fraction(1) + spare_pct
    assert limit < 100 * (DEPTH.fraction(1) + cheapest_ms / DEPTH.full_ft_step_ms(WORKLOAD))
    with pytest.raises(NoPlanFits) as err:
        depth_planned({"params": 2000.0, "latency_ms": 1e-6, "train_time_pct": limit})
    assert err.value.name == "latency_ms"


def test_with_a_training_time_budget_the_latency_budget_still_holds():
    loose = depth_planned({"params": 2000.0, "train_time_pct": 90.0})
    limit = loose.totals()["latency_ms"] / 2
    plan = depth_planned({"params": 2000.0, "train_time_pct": 90.0, "latency_ms": limit})
    assert plan.adapted() and plan.totals()["latency_ms"] <= limit


def test_a_plan_that_adapts_nothing_is_priced_as_the_frozen_backbones_forward_pass():
    sites = discover_sites(tiny_bert(), ["query", "value"])
    plan = make_plan([spec(s, 0.0) for s in sites], WORKLOAD, {"params": 2000.0}, PlannerSettings(), DEPTH)
    assert not plan.adapted()  # no utility anywhere
    assert plan.train_time_pct == pytest.approx(100 * DEPTH.fraction(DEPTH.layers))


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            {"sizes": [1, 2]},
            "baseline.planner.sizes must map methods (lora, adapter, prefix, dora, ia3, loha) to lists "
            "of sizes, got [1, 2]",
        ),
        (
            {"sizes": {"magic": [1]}},
            "baseline.planner.sizes: unknown method 'magic' (choose from: lora, adapter, prefix, dora, ia3, loha)",
        ),
        ({"gain_exponent": 0}, "baseline.planner.gain_exponent must be in (0, 1], got 0"),
        (
            {"utility": "magic"},
            "baseline.planner.utility must be one of profiled, uniform, depth, random, kind_depth, got 'magic'",
        ),
        ({"utility_seed": -1}, "baseline.planner.utility_seed must be an integer >= 0, got -1"),
        ({"kind_prior": [1.0]}, "baseline.planner.kind_prior must map site kinds to constants, got [1.0]"),
        ({"kind_prior": {"query": 0}}, "baseline.planner.kind_prior.query must be a positive number, got 0"),
    ],
)
def test_bad_planner_settings_are_refused_in_one_whole_line(settings, message):
    with pytest.raises(LayerLensError, match=f"^{re.escape(message)}$"):
        PlannerSettings(**settings)
    assert PlannerSettings(gain_exponent=1.0).gain_exponent == 1.0  # (0, 1]: 1 is allowed


def test_sites_of_two_methods_without_sizes_name_both_in_one_line_with_or_without_a_training_time_budget():
    message = (
        "^baseline[.]planner[.]sizes must list a size for adapter or lora "
        "\\(the methods of baseline[.]sites\\), got none$"
    )
    with pytest.raises(LayerLensError, match=message):
        planned([1.0] * 8, {"params": 1e9}, kinds=("query", "attn_block"), sizes={"lora": [], "adapter": []})
    sites = discover_sites(tiny_bert(), ["query", "attn_block"])
    for train_time_pct in (90.0, 20.0):  # 20: under the frozen backbone's own time, no depth is even tried
        with pytest.raises(LayerLensError, match=message):
            make_plan(
                [spec(s) for s in sites],
                WORKLOAD,
                {"params": 1e9, "train_time_pct": train_time_pct},
                PlannerSettings(sizes={"lora": [], "adapter": []}),
                DEPTH,
            )


def test_by_default_every_method_is_offered_sizes_1_to_16_ia3_its_one_and_a_boolean_size_is_refused():
    assert PlannerSettings().sizes == {
        **{method: list(range(1, 17)) for method in ("lora", "adapter", "prefix", "dora", "loha")},
        "ia3": [1],
    }
    with pytest.raises(LayerLensError, match="^baseline[.]planner[.]sizes[.]lora must be integers >= 1, got True$"):
        PlannerSettings(sizes={"lora": [2, True]})


def test_at_exactly_the_training_time_named_the_budget_that_binds_next_is_named():
    with pytest.raises(NoPlanFits) as err:
        depth_planned({"params": 2000.0, "train_time_pct": 20.0})
    needed = err.value.needed  # as a user would take it from the error, to the last digit
    with pytest.raises(NoPlanFits) as again:
        depth_planned({"params": 10.0, "train_time_pct": needed})
    assert again.value.name == "params"


def test_an_80_layer_decoder_of_560_sites_plans_and_its_json_and_plot_stay_readable(tmp_path):
    """LLM scale (issue 20.5): 80 Llama layers x the 7 default site kinds, planned whole; plan.json holds one line per site
    after its summary, and the plot names layers, not 560 sites, at a bounded width. Its speed is a benchmark's
    (experiments/llm_scale_plan.py), not this test's."""
    kinds = ["query", "key", "value", "attn_out", "attn_block", "ffn_block", "attention"]  # the default sites
    model = RandomDecoderBackbone(
        "tiny", hidden_size=16, num_hidden_layers=80, num_attention_heads=2, intermediate_size=32
    ).classifier(2)
    sites = discover_sites(model, kinds)
    assert len(sites) == 560
    specs = [spec(s, 1.0 + (s.layer * 7 + i) % 13) for i, s in enumerate(sites)]
    plan = make_plan(specs, WORKLOAD, {"params": 20000.0}, PlannerSettings())
    assert plan.within_budgets() and len(plan.adapted()) > 80
    text = plan.to_json()
    lines = text.splitlines()
    assert lines[-562:-2] == [
        "    " + json.dumps({**asdict(c), "costs": c.costs.as_dict()}) + "," for c in plan.choices[:-1]
    ] + ["    " + json.dumps({**asdict(plan.choices[-1]), "costs": plan.choices[-1].costs.as_dict()})]
    assert Plan.from_json(text).to_json() == text
    path = plot_plan(plan, tmp_path / "plan.png", "80 layers")
    with Image.open(path) as image:
        assert image.width <= MAX_WIDTH_IN * 110
    assert ticks(plan.choices) == ([7 * layer for layer in range(0, 80, 2)], [f"L{layer}" for layer in range(0, 80, 2)])
    assert ticks(plan.choices[:14])[1] == [c.site for c in plan.choices[:14]]


def test_a_site_as_another_offered_method_sees_it_has_that_methods_dimensions_and_no_others():
    site = SiteSpec("L0.ffn_block", 0, "ffn_block", "adapter", 32, 32, 2.0, (("lora", 32, 64), ("dora", 64, 16)))
    assert site.seen_by("adapter") is site and site.seen_by("none") is site
    assert site.seen_by("dora") == SiteSpec("L0.ffn_block", 0, "ffn_block", "dora", 64, 16, 2.0, ())
    assert site.seen_by("lora").methods() == ["lora"]
