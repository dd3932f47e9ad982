"""The cost model against independent references: parameter counts against the parameters a plan actually adds
(BERT, RoBERTa, DeBERTa-v2), forward FLOPs against torch's FlopCounterMode, and the depth and training-time
estimates against their formulas worked out by hand."""

from fractions import Fraction

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification, DebertaV2Config, RobertaConfig

from layerlens.lens.apply import apply_plan
from layerlens.lens.baseline import layer_flops
from layerlens.lens.sites import discover_sites
from layerlens.methods.layers.adapter import attach_adapter
from layerlens.methods.layers.prefix import attach_prefix
from layerlens.models.backbones import RandomBertBackbone
from layerlens.planning.choices import Choice, Plan
from layerlens.planning.costs import MB, Costs, Depth, SiteSpec, Workload, option_costs
from layerlens.planning.planner import PlannerSettings, make_plan

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
WORKLOAD = Workload(batch_size=4, tokens_per_batch=100.0, seq_len=30.0, num_heads=2, flops_per_s=1e9)


def bert() -> nn.Module:
    return RandomBertBackbone(
        "tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    ).classifier(2)


def roberta() -> nn.Module:
    return AutoModelForSequenceClassification.from_config(
        RobertaConfig(
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=3,
            intermediate_size=40,
            vocab_size=100,
            num_labels=2,
            **NO_DROPOUT,
        )
    )


def deberta() -> nn.Module:  # as deberta-v3: relative attention with both position terms
    return AutoModelForSequenceClassification.from_config(
        DebertaV2Config(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            vocab_size=100,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            max_relative_positions=-1,
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            num_labels=2,
            **NO_DROPOUT,
        )
    )


MODELS = {"bert": bert, "roberta": roberta, "deberta-v2": deberta}
SIZES = (1, 3, 8)
MARKERS = {"lora": ".lora_", "adapter": ".layerlens_adapter.", "prefix": ".layerlens_prefix."}


def spec(site, utility: float = 1.0) -> SiteSpec:
    return SiteSpec(site.name, site.layer, site.kind, site.method, site.d_in, site.d_out, utility)


def plan_of(sites, sizes: dict[str, int]) -> Plan:
    zero = Costs(0.0, 0.0, 0.0, 0.0)
    return Plan(
        [
            Choice(
                s.name,
                s.layer,
                s.kind,
                s.method,
                s.method if s.name in sizes else "none",
                sizes.get(s.name, 0),
                1.0,
                zero,
            )
            for s in sites
        ],
        {},
        0.0,
    )


def flops(module: nn.Module, *inputs) -> int:
    """Forward FLOPs of module(*inputs) as torch counts them (attention through the math kernel, whose matmuls
    it sees)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("shift", range(len(SIZES)))
@pytest.mark.parametrize("family", MODELS)
def test_each_options_parameters_are_the_parameters_it_adds(family, shift):
    torch.manual_seed(0)
    model = MODELS[family]()
    sites = discover_sites(model)  # every kind the family takes: DeBERTa refuses the prefix ('attention')
    assert ("attention" in {s.kind for s in sites}) == (family != "deberta-v2")
    sizes = {s.name: SIZES[(j + shift) % len(SIZES)] for j, s in enumerate(sites)}  # each site meets each size
    before = {id(p) for p in model.parameters()}
    model = apply_plan(model, sites, plan_of(sites, sizes), alpha_ratio=2.0, dropout=0.0)
    # what the plan added, less peft's trainable copy of the task head (modules_to_save)
    added = {n: p for n, p in model.named_parameters() if id(p) not in before and "modules_to_save" not in n}
    assert added and all(p.requires_grad for p in added.values())
    counted = {s.name: 0 for s in sites}
    for name, p in added.items():
        (owner,) = [s for s in sites if f"{s.target}{MARKERS[s.method]}" in name]  # exactly one site's
        counted[owner.name] += p.numel()
    for site in sites:
        expected = option_costs(spec(site), site.method, sizes[site.name], WORKLOAD).params
        assert counted[site.name] == expected, (site.name, site.method, sizes[site.name])


@pytest.mark.parametrize("rank", [1, 4])
def test_lora_flops_are_what_its_branch_adds_to_the_linear_map(rank):
    torch.manual_seed(0)
    model = bert()
    sites = discover_sites(model, ["query", "ffn_in", "ffn_out"])  # 32x32, 32->64, 64->32
    model = apply_plan(model, sites, plan_of(sites, {s.name: rank for s in sites}), alpha_ratio=2.0, dropout=0.0)
    tokens = 2 * 7
    for site in sites:
        wrapped = model.base_model.model.get_submodule(site.path)
        x = torch.randn(2, 7, site.d_in)
        measured = (flops(wrapped, x) - flops(wrapped.base_layer, x)) / tokens
        assert measured > 0
        assert option_costs(spec(site), "lora", rank, WORKLOAD).flops == measured, site.name


@pytest.mark.parametrize("width", [1, 5])
@pytest.mark.parametrize("kind", ["attn_block", "ffn_block"])
def test_adapter_flops_are_what_it_adds_to_its_block(kind, width):
    torch.manual_seed(0)
    (site,) = [s for s in discover_sites(bert(), [kind]) if s.layer == 0]
    block = site.module.eval()
    inner = block.dense.in_features  # the block's input: attention output (32) or the feed-forward's (64)
    hidden_states, residual = torch.randn(3, 5, inner), torch.randn(3, 5, site.d_out)
    plain = flops(block, hidden_states, residual)
    attach_adapter(block, site.d_out, width)
    measured = (flops(block, hidden_states, residual) - plain) / 15
    assert measured == option_costs(spec(site), "adapter", width, WORKLOAD).flops == 4 * site.d_out * width


@pytest.mark.parametrize("length", [1, 6])
def test_prefix_flops_are_the_extra_scores_and_mixing(length):
    """Each token's query meets `length` more keys (a dot product of head_size per head: 2 * hidden FLOPs over
    the heads) and mixes `length` more values (the same again): 4 * length * hidden per token."""
    torch.manual_seed(0)
    model = bert().eval()
    (site,) = [s for s in discover_sites(model, ["attention"]) if s.layer == 1]
    hidden = 32
    assert option_costs(spec(site), "prefix", length, WORKLOAD).flops == 4 * length * hidden
    x = torch.randn(2, 9, hidden)
    plain = flops(site.module, x)
    attach_prefix(site.module, length)
    assert (flops(site.module, x) - plain) / (2 * 9) == 4 * length * hidden


def test_memory_and_latency_of_each_method_by_hand():
    """WORKLOAD: 100 tokens a batch, 4 sequences of padded length 30, 2 heads, 1e9 FLOP/s. Memory: 16 bytes a
    parameter (weight, gradient, two AdamW moments) and 4 an activation kept for backward; latency: forward and
    backward (3x the forward FLOPs) of each batch's tokens."""
    lora = option_costs(SiteSpec("s", 0, "ffn_in", "lora", 32, 64, 1.0), "lora", 4, WORKLOAD)
    # 4 * (32 + 64) = 384 parameters, 768 FLOPs a token; keeps A's output: 4 values a token
    assert lora == Costs(384.0, 768.0, (384 * 16 + 100 * 4 * 4) / MB, 3 * 768 * 100 / 1e9 * 1e3)
    adapter = option_costs(SiteSpec("s", 0, "ffn_block", "adapter", 32, 32, 1.0), "adapter", 4, WORKLOAD)
    # down 32x4 + 4, up 4x32 + 32 = 292; 4 * 32 * 4 = 512 FLOPs; keeps down's output, its GELU and up's: 4 + 4 + 32
    assert adapter == Costs(292.0, 512.0, (292 * 16 + 100 * 40 * 4) / MB, 3 * 512 * 100 / 1e9 * 1e3)
    prefix = option_costs(SiteSpec("s", 0, "attention", "prefix", 32, 32, 1.0), "prefix", 4, WORKLOAD)
    # keys and values 2 x 4 x 32 = 256; 4 * 4 * 32 = 512 FLOPs; extra scores and probabilities per head and query:
    # 2 * 4 sequences * 2 heads * 30 queries * 4 prefix keys = 1920
    assert prefix == Costs(256.0, 512.0, (256 * 16 + 1920 * 4) / MB, 3 * 512 * 100 / 1e9 * 1e3)
    assert option_costs(SiteSpec("s", 0, "query", "lora", 32, 32, 1.0), "none", 0, WORKLOAD) == Costs(0, 0, 0, 0)


def test_layer_flops_are_the_layers_counted_flops_per_token():
    torch.manual_seed(0)
    layer = bert().bert.encoder.layer[0].eval()
    # by hand: q, k, v, attention output 4 x 2*32*32, feed-forward 2 x 2*32*64; scores and mixing 2 x 2*seq*32
    assert layer_flops(layer, 11.0) == 4 * 2 * 32 * 32 + 2 * 2 * 32 * 64 + 2 * 2 * 11 * 32
    x = torch.randn(3, 11, 32)
    assert flops(layer, x) / (3 * 11) == layer_flops(layer, 11.0)


# Depth.fraction worked out by hand for 4 layers and 2 epochs: layers from `lowest` up run forward and backward
# for their input (2 of full fine-tuning's 3 units), those below forward only (1), and when cached only in the
# first of the 2 epochs (1/2); over full fine-tuning's 3 units x 4 layers = 12.
FRACTIONS_4_LAYERS_2_EPOCHS = {
    False: [Fraction(8, 12), Fraction(6 + 1, 12), Fraction(4 + 2, 12), Fraction(2 + 3, 12), Fraction(0 + 4, 12)],
    True: [Fraction(8, 12), Fraction(12 + 1, 24), Fraction(8 + 2, 24), Fraction(4 + 3, 24), Fraction(0 + 4, 24)],
}  # cached, in 24ths: (6 + 1/2) / 12 = (12 + 1) / 24, ...


@pytest.mark.parametrize("cached", [False, True])
def test_depth_fraction_at_every_depth(cached):
    depth = Depth(layers=4, layer_flops=1.0, epochs=2, cached=cached)
    for lowest, expected in enumerate(FRACTIONS_4_LAYERS_2_EPOCHS[cached]):
        assert depth.fraction(lowest) == pytest.approx(float(expected), rel=1e-12), lowest
    # other shapes, by the formula (2 * (layers - lowest) + below) / (3 * layers)
    for layers, epochs in [(1, 1), (3, 5), (12, 3)]:
        depth = Depth(layers, 1.0, epochs, cached)
        for lowest in range(layers + 1):
            below = Fraction(lowest, epochs) if cached else Fraction(lowest)
            expected = (2 * (layers - lowest) + below) / (3 * layers)
            assert depth.fraction(lowest) == pytest.approx(float(expected), rel=1e-12), (layers, epochs, lowest)


def test_full_fine_tuning_step_time():
    # 3 x (4 layers x 1e6 FLOPs a token) x 100 tokens at 1e9 FLOP/s: 1.2 s
    assert Depth(4, 1e6, 2, True).full_ft_step_ms(WORKLOAD) == pytest.approx(1200.0)


def two_query_sites(utilities: tuple[float, float]) -> list[SiteSpec]:
    return [SiteSpec(f"L{i}.query", i, "query", "lora", 32, 32, u) for i, u in enumerate(utilities)]


RANK_2 = PlannerSettings(sizes={"lora": [2]})  # rank 2 at 32x32: 128 parameters, 256 FLOPs a token


@pytest.mark.parametrize(
    "cached,params,adapted,expected",
    [
        # only the more useful layer 1 fits 128 parameters: the backbone's share at depth 1 (cached: 2.5 / 6,
        # else 3 / 6), plus its latency over full fine-tuning's step: 256 / (2 layers x 1e4) = 1.28%
        (True, 128, ["L1.query"], 100 * 2.5 / 6 + 1.28),
        (False, 128, ["L1.query"], 100 * 3 / 6 + 1.28),
        # both fit 256: depth 0 (4 / 6), and both latencies
        (True, 256, ["L0.query", "L1.query"], 100 * 4 / 6 + 2 * 1.28),
    ],
)
def test_the_plans_training_time_estimate(cached, params, adapted, expected):
    depth = Depth(layers=2, layer_flops=1e4, epochs=2, cached=cached)
    plan = make_plan(two_query_sites((1.0, 4.0)), WORKLOAD, {"params": params}, RANK_2, depth)
    assert [c.site for c in plan.adapted()] == adapted
    assert plan.train_time_pct == pytest.approx(expected, rel=1e-12)
    assert make_plan(two_query_sites((1.0, 4.0)), WORKLOAD, {"params": params}, RANK_2).train_time_pct is None


@pytest.mark.parametrize("limit,rank", [(50.0, 2), (55.0, 16)])
def test_a_training_time_budget_prices_the_depth_and_the_sites_latency(limit, rank):
    depth = Depth(layers=2, layer_flops=1e4, epochs=2, cached=True)
    sites = two_query_sites((4.0, 1.0))  # layer 0 is the more useful
    settings = PlannerSettings(sizes={"lora": [2, 16]})  # rank 16: 1024 parameters, 2048 FLOPs, 10.24% of a step
    unlimited = make_plan(sites, WORKLOAD, {"params": 1024}, settings, depth)
    assert [(c.site, c.size) for c in unlimited.adapted()] == [("L0.query", 16)]
    # Depth 0 alone costs 4 / 6 = 66.7%: over either limit. Depth 1 costs 2.5 / 6 = 41.67%, which leaves 8.33% of
    # 50 for layer 1's site (rank 2's 1.28% fits, rank 16's 10.24% does not) and 13.33% of 55 (rank 16 fits).
    plan = make_plan(sites, WORKLOAD, {"params": 1024, "train_time_pct": limit}, settings, depth)
    assert [(c.site, c.size) for c in plan.adapted()] == [("L1.query", rank)]
    assert plan.train_time_pct == pytest.approx(100 * 2.5 / 6 + 1.28 * rank / 2, rel=1e-12)
