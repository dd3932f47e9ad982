"""The methods through peft beside LoRA (layerlens/methods/dora.py, ia3.py, loha.py; linears.py): each option's
parameters are the ones it adds and its FLOPs the ones torch counts; each method's parameters train and the output
depends on them, in one model with LoRA's peft model; the planner picks them where the menu offers them."""

import json
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification, DebertaV2Config

from layerlens.errors import LayerLensError
from layerlens.lens.apply import apply_plan
from layerlens.lens.sites import discover_sites
from layerlens.methods import linears
from layerlens.models import families
from layerlens.pipeline import run_experiment
from layerlens.planning.costs import Costs, SiteSpec, option_costs
from layerlens.planning.planner import PlannerSettings, make_plan
from tests.test_method_menu import ADAPTERS, WORKLOAD, added_by_site, batch, menu, owner, plan_of, specs, tiny_bert

PEFT_METHODS = ["lora", "dora", "ia3", "loha"]
# Each method at linear sites of several kinds, in one model beside the adapter and the prefix.
MENU = {kind: ["lora", "dora", "ia3", "loha"] for kind in ["query", "value", "ffn_in", "ffn_out"]}
SITES = ["query", "value", "ffn_in", "ffn_out", "ffn_block", "attention"]


# Every new method at each kind it takes, sizes differing; LoRA and the adapter beside them.
MIXED = {
    "L0.query": ("lora", 2),
    "L1.query": ("dora", 3),
    "L0.value": ("ia3", 1),
    "L1.value": ("loha", 2),
    "L0.ffn_in": ("dora", 1),
    "L1.ffn_in": ("ia3", 1),
    "L0.ffn_out": ("ia3", 1),
    "L1.ffn_out": ("loha", 3),
    "L0.ffn_block": ("adapter", 1),
    "L1.ffn_block": ("adapter", 2),
    "L1.attention": ("prefix", 2),
}
# Block sites: DoRA and LoHa on their linears, each of the site's size (no LoRA: no head copy).
BLOCKS = {
    "L0.ffn_block": ("dora", 2),
    "L1.ffn_block": ("loha", 1),
    "L0.attention": ("loha", 3),
    "L1.attention": ("dora", 3),
}
BLOCK_MENU = {"ffn_block": ["adapter", "lora", "dora", "loha"], "attention": ["prefix", "lora", "dora", "loha"]}


@pytest.mark.parametrize(
    "chosen,kinds,offered", [(MIXED, SITES, MENU), (BLOCKS, ["ffn_block", "attention"], BLOCK_MENU)]
)
def test_each_options_parameters_are_the_parameters_it_adds_in_one_mixed_model(chosen, kinds, offered):
    model = tiny_bert()
    sites = discover_sites(model, kinds, menu(offered))
    plan = plan_of(sites, chosen, menu(offered))
    before = {id(p) for p in model.parameters()}
    model = apply_plan(model, sites, plan, alpha_ratio=2.0, dropout=0.0, offered=menu(offered))
    assert added_by_site(model, sites, before) == {c.site: c.costs.params for c in plan.adapted()}
    added = {n for n, p in model.named_parameters() if id(p) not in before and "modules_to_save" not in n}
    for name in added:  # each method's parameters under its own adapter
        assert ADAPTERS[chosen[owner(name, sites)][0]] in name, name
    # nothing else trains but the task head (peft's copy of it where LoRA is in the plan)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n in trainable - added if "classifier" in n}
    assert head and trainable - added == head


def test_on_deberta_each_option_adds_its_parameters_at_the_familys_modules():
    """DeBERTa names its projections query_proj, key_proj, value_proj: the methods find them through the family."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        DebertaV2Config(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            vocab_size=100,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            num_labels=2,
        )
    )
    offered = menu({"query": ["lora", "ia3"], "value": ["dora", "loha"], "ffn_block": ["adapter", "loha", "dora"]})
    sites = discover_sites(model, ["query", "value", "ffn_block"], offered)
    chosen = {
        "L0.query": ("lora", 2),
        "L1.query": ("ia3", 1),
        "L0.value": ("dora", 3),
        "L1.value": ("loha", 2),
        "L0.ffn_block": ("loha", 2),
        "L1.ffn_block": ("dora", 1),
    }
    plan = plan_of(sites, chosen, offered)
    before = {id(p) for p in model.parameters()}
    model = apply_plan(model, sites, plan, 2.0, 0.0, offered)
    assert added_by_site(model, sites, before) == {c.site: c.costs.params for c in plan.adapted()}
    assert any("attention.self.query_proj.ia3_l" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize(
    "chosen,kinds,offered", [(MIXED, SITES, MENU), (BLOCKS, ["ffn_block", "attention"], BLOCK_MENU)]
)
def test_each_peft_module_takes_its_sites_rank_scale_dropout_and_kind(chosen, kinds, offered):
    """Every linear a site's option adapts: LoRA, DoRA and LoHa at the site's rank, scaled by lora_alpha / rank =
    the ratio, LoRA and DoRA with the run's dropout and DoRA's magnitude on DoRA's alone; IA3 scales `ffn_out` on
    its input (peft's feedforward), every other linear on its output."""
    from peft.tuners.ia3 import IA3Layer
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lora import LoraLayer

    model = tiny_bert()
    sites = discover_sites(model, kinds, menu(offered))
    expected = {}
    for site in sites:
        method, size = chosen.get(site.name, ("none", 0))
        if method in PEFT_METHODS:
            for target, kind, _ in linears.targets(model, [(site, size)]):
                adapter = ADAPTERS[method].strip(".")
                if method == "ia3":
                    expected[target] = {adapter: kind == "ffn_out"}
                else:
                    dora = (method == "dora",) if method != "loha" else ()
                    dropout = (0.25,) if method != "loha" else ()
                    expected[target] = {adapter: (size, 1.5, *dropout, *dora)}
    plan = plan_of(sites, chosen, menu(offered))
    model = apply_plan(model, sites, plan, alpha_ratio=1.5, dropout=0.25, offered=menu(offered))
    seen = {}
    for name, module in model.named_modules():
        # peft matches a target by the end of a module's name
        target = next((t for t in expected if name.endswith(f".{t}")), name)
        if isinstance(module, IA3Layer):
            seen[target] = {adapter: module.is_feedforward for adapter in module.ia3_l}
        elif isinstance(module, LoHaLayer):
            seen[target] = {adapter: (module.r[adapter], module.scaling[adapter]) for adapter in module.r}
        elif isinstance(module, LoraLayer):
            seen[target] = {
                adapter: (r, module.scaling[adapter], module.lora_dropout[adapter].p, module.use_dora[adapter])
                for adapter, r in module.r.items()
            }
    assert seen == expected


def test_a_blocks_linears_are_linear_kinds_of_the_family_table():
    assert all(kind in families.LINEAR_KINDS for kinds in linears.BLOCK_LINEARS.values() for kind in kinds)
    assert set(linears.BLOCK_LINEARS) <= set(families.SITE_KINDS) - set(families.LINEAR_KINDS)


def test_the_costs_of_each_new_method_by_hand():
    """WORKLOAD: 100 tokens a batch. A 32 -> 64 linear (ffn_in), a 64 -> 32 one (ffn_out); the feed-forward block
    (seen as ffn_out: 64 -> 32) adapts both."""
    ffn_in = SiteSpec("s", 0, "ffn_in", "lora", 32, 64, 1.0)
    ffn_out = replace(ffn_in, kind="ffn_out", d_in=64, d_out=32)
    block = replace(ffn_out, kind="ffn_block")
    # DoRA rank 2: LoRA's 2 * 96 + the magnitude 64; per token LoRA's 384 FLOPs and the frozen map again (4096);
    # per batch B A through an identity: 2 * 32 * 2 * 96 = 12288, over 100 tokens
    assert option_costs(ffn_in, "dora", 2, WORKLOAD).params == 2 * 96 + 64
    assert option_costs(ffn_in, "dora", 2, WORKLOAD).flops == 384 + 4096 + 12288 / 100
    # IA3: a vector of the outputs (64), or of ffn_out's input (64 too: the inner units); never of the hidden 32
    assert option_costs(ffn_in, "ia3", 1, WORKLOAD) == Costs(
        64.0, 64.0, (64 * 16 + 6400 * 4) / 2**20, 3 * 64 * 100 / 1e9 * 1e3
    )
    assert option_costs(ffn_out, "ia3", 1, WORKLOAD).params == 64
    # LoHa rank 3: 2 * 3 * 96 = 576; per token the update applied (2 * 32 * 64), per batch 4 * 3 * 32 * 64 / 100
    assert option_costs(ffn_in, "loha", 3, WORKLOAD).params == 576
    assert option_costs(ffn_in, "loha", 3, WORKLOAD).flops == 4096 + 24576 / 100
    # On the block, the sum over its two linears (32 -> 64, 64 -> 32): for LoRA twice ffn_in's
    for method in ("lora", "dora", "loha"):
        parts = [option_costs(s, method, 2, WORKLOAD).as_dict() for s in (ffn_in, ffn_out)]
        assert option_costs(block, method, 2, WORKLOAD).as_dict() == pytest.approx(
            {name: parts[0][name] + parts[1][name] for name in parts[0]}, rel=1e-12
        )
    assert option_costs(block, "lora", 2, WORKLOAD).params == 2 * option_costs(ffn_in, "lora", 2, WORKLOAD).params


def flops(module: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("method,size", [("dora", 1), ("dora", 3), ("loha", 2), ("loha", 4), ("ia3", 1)])
def test_the_flops_of_each_new_method_are_what_torch_counts_it_adding(method, size):
    """In training (LoRA's dropout on: DoRA applies the frozen map again to the dropped-out input). torch counts
    matrix products only: IA3's multiplies are priced by hand (one a scaled value) and counted as none."""
    model = tiny_bert()
    offered = menu({kind: [method] for kind in ["query", "ffn_in", "ffn_out"]})
    sites = [s for s in discover_sites(model, ["query", "ffn_in", "ffn_out"], offered) if s.layer == 0]
    plan = plan_of(sites, {s.name: (method, size) for s in sites}, offered)
    model = apply_plan(model, sites, plan, alpha_ratio=2.0, dropout=0.1, offered=offered).train()
    workload = replace(WORKLOAD, tokens_per_batch=2 * 5.0)  # per-batch work spread over this batch's tokens
    for site, spec in zip(sites, specs(sites, offered)):
        assert site.method == method
        wrapped = model.get_submodule(site.path)
        x = torch.randn(2, 5, site.d_in)
        measured = (flops(wrapped, x) - flops(wrapped.base_layer, x)) / workload.tokens_per_batch
        costs = option_costs(spec, method, size, workload)
        matmul = costs.flops - (costs.params if method == "ia3" else 0)
        assert measured == pytest.approx(matmul, rel=1e-12), site.name


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_each_methods_parameters_change_in_a_step_and_the_output_depends_on_them(method):
    """Beside LoRA and another new method in one model: the method's parameters (at a linear and, where it takes
    one, a block) move in an optimiser step, and perturbing them alone moves the output."""
    model = tiny_bert()
    other = "ia3" if method != "ia3" else "dora"
    kinds = {
        "query": list(dict.fromkeys([method, "lora"])),
        "value": [other, "lora"],
        "ffn_block": ["adapter"] if method == "ia3" else ["adapter", method],
    }  # IA3 takes no block
    chosen = {
        "L0.query": (method, 2 if method != "ia3" else 1),
        "L1.query": ("lora", 2),
        "L0.value": (other, 1),
        "L1.value": ("lora", 1),
        "L0.ffn_block": ("adapter", 2),
        **({"L1.ffn_block": (method, 1)} if method != "ia3" else {}),
    }
    offered = menu(kinds)
    sites = discover_sites(model, ["query", "value", "ffn_block"], offered)
    plan = plan_of(sites, chosen, offered)
    model = apply_plan(model, sites, plan, alpha_ratio=2.0, dropout=0.0, offered=offered)
    own = {
        n: p
        for n, p in model.named_parameters()
        if ADAPTERS[method] in n and chosen.get(owner(n, sites), ("none",))[0] == method
    }
    assert own and all(p.requires_grad for p in own.values())
    assert {owner(n, sites) for n in own} == {s for s, (m, _) in chosen.items() if m == method}

    data = batch()
    model.eval()
    with torch.no_grad():
        start = model(**data).logits.clone()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in own.items()}
    optimiser = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    for _ in range(2):  # a zero-initialised factor first, then the others
        optimiser.zero_grad()
        model(**data).loss.backward()
        optimiser.step()
    moved = {n for n, p in own.items() if not torch.equal(before[n], p.detach())}
    assert moved == set(own), set(own) - moved

    model.eval()
    with torch.no_grad():
        trained = model(**data).logits.clone()
        assert not torch.allclose(trained, start)
        for name, p in own.items():  # each of its sites: the output moves with its parameters
            saved = p.detach().clone()
            p.add_(0.5 * torch.randn_like(p))
            assert not torch.equal(model(**data).logits, trained), name  # (a random BERT's attention is flat)
            p.copy_(saved)
        assert torch.equal(model(**data).logits, trained)


def test_the_lora_peft_model_keeps_its_head_and_adapters_active_when_others_join_it():
    """peft activates an injected adapter everywhere (LoRA's layers and the head's trainable copy included):
    each is put back, so LoRA's update and the trained head are in the output."""
    model = tiny_bert()
    offered = menu({"query": ["lora", "ia3"], "value": ["lora", "dora", "loha"]})
    sites = discover_sites(model, ["query", "value"], offered)
    chosen = {"L0.query": ("lora", 2), "L1.query": ("ia3", 1), "L0.value": ("dora", 2), "L1.value": ("loha", 2)}
    model = apply_plan(model, sites, plan_of(sites, chosen, offered), 2.0, 0.0, offered)
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    active = {
        name.split("encoder.layer.")[-1]: list(m.active_adapters)
        for name, m in model.named_modules()
        if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))
    }
    assert active == {
        "0.attention.self.query": ["default"],
        "1.attention.self.query": ["ia3"],
        "0.attention.self.value": ["dora"],
        "1.attention.self.value": ["loha"],
        "base_model.model.classifier": ["default"],
    }
    assert list(model.peft_config) == ["default"]  # LoRA's peft model, as without the others


def test_the_planner_picks_methods_and_sizes_together_and_the_plan_trains(compose_run, tmp_path):
    """The menu offers LoRA or IA3 at the query projections, valued alike (utility=uniform): within 160 parameters
    the best plan is LoRA of rank 2 (128 parameters, worth 2 ** 0.5) at one and IA3 (32, worth 1) at the other. It is
    made, built and trained as any plan: profile -> plan -> build (LoRA's peft model, IA3 beside it) -> train."""
    cfg = compose_run(
        "baseline=layerlens",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "baseline.profile.num_batches=4",
        "baseline.sites=[query]",
        "baseline.planner.utility=uniform",
        "budget.params_pct=null",
        "budget.params=160",
        "baseline.planner.sizes.lora=[1,2,4]",
        "+baseline.planner.menu.query=[lora,ia3]",
    )
    run_experiment(cfg, tmp_path / "run")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert sorted((site["method"], site["size"]) for site in plan["sites"]) == [("ia3", 1), ("lora", 2)]
    assert {site["allowed"] for site in plan["sites"]} == {"lora,ia3"}
    assert plan["totals"]["params"] == 160


def test_the_allocator_weighs_a_methods_value_and_cost_at_each_size():
    """At equal size a method is worth the same (times its method_value): the cheaper wins, so DoRA (LoRA plus a
    magnitude) is picked over LoRA only where it is valued above it; IA3 (one size) where a rank is not worth its
    parameters."""
    model = tiny_bert()
    offered = menu({"query": ["lora", "dora", "ia3"]})
    sites = discover_sites(model, ["query"], offered)
    spec = specs(sites, offered, utilities=[4.0, 1.0])
    settings = PlannerSettings(
        sizes={"lora": [1, 2, 4], "dora": [1, 2, 4], "ia3": [1]}, menu={"query": ["lora", "dora", "ia3"]}
    )
    # room for LoRA of rank 4 (256) at the first and IA3 (32) at the second, not a rank beside it
    plan = make_plan(spec, WORKLOAD, {"params": 300.0}, settings)
    assert [(c.method, c.size) for c in plan.choices] == [("lora", 4), ("ia3", 1)]
    valued = make_plan(spec, WORKLOAD, {"params": 300.0}, replace(settings, method_value={"dora": 1.5}))
    assert [(c.method, c.size) for c in valued.choices] == [("dora", 4), ("none", 0)]  # 4 * 2 * 32 + 32 = 288


def test_ia3_takes_one_size_and_a_plan_giving_it_another_is_refused():
    model = tiny_bert()
    offered = menu({"query": ["lora", "ia3"]})
    sites = discover_sites(model, ["query"], offered)
    plan = plan_of(sites, {"L0.query": ("ia3", 1)}, offered)
    edited = replace(plan, choices=[replace(plan.choices[0], size=2), *plan.choices[1:]])
    with pytest.raises(LayerLensError, match=r"^plan: site L0.query must have a size from 1 to 1 for ia3, got 2$"):
        apply_plan(model, sites, edited, 2.0, 0.0, offered)
    with pytest.raises(LayerLensError, match=r"^baseline.planner.sizes.ia3 must be integers from 1 to 1, got 2$"):
        PlannerSettings(sizes={"ia3": [1, 2]})


def test_ia3_scales_the_feed_forward_output_linear_on_its_input_and_the_attention_output_on_its_output():
    """attn_out and ffn_out are both `output.dense` on BERT: peft's own default (any `output.dense` is feed-forward)
    would scale attn_out on its input too, so the plan names ffn_out's linears alone."""
    from peft.tuners.ia3 import IA3Layer

    model = tiny_bert()
    offered = menu({"attn_out": ["ia3"], "ffn_out": ["ia3"]})
    sites = [s for s in discover_sites(model, ["attn_out", "ffn_out"], offered) if s.layer == 0]
    plan = plan_of(sites, {s.name: ("ia3", 1) for s in sites}, offered)
    model = apply_plan(model, sites, plan, alpha_ratio=2.0, dropout=0.0, offered=offered)
    feedforward = {
        name.split("layer.0.")[1]: module.is_feedforward
        for name, module in model.named_modules()
        if isinstance(module, IA3Layer)
    }
    assert feedforward == {"attention.output.dense": False, "output.dense": True}


def test_what_dora_and_loha_keep_for_backward_per_linear():
    """The third of each linear's costs, in values kept a batch (100 tokens): DoRA, A's output (rank) and the
    branch's and the frozen map's outputs (2 x d_out) a token; LoHa, the materialised update (d_in x d_out)."""
    from layerlens.methods import dora, loha

    assert dora.linear_costs(32, 64, 2, WORKLOAD)[2] == 100 * (2 + 2 * 64)
    assert loha.linear_costs(32, 64, 3, WORKLOAD)[2] == 32 * 64


def test_loha_refuses_a_site_of_gpt2s_conv1d_in_one_line_naming_the_site():
    from transformers import GPT2Config

    from layerlens.methods import loha
    from layerlens.methods.registry import Build

    model = AutoModelForSequenceClassification.from_config(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=100, n_positions=32, num_labels=2, pad_token_id=0)
    )
    (site,) = discover_sites(model, ["ffn_in"], menu({"ffn_in": ["loha"]}))
    with pytest.raises(LayerLensError) as err:
        loha.wrap(model, [(site, 2)], Build((), 2.0, 0.0))
    assert str(err.value) == (
        "plan: site L0.ffn_in (ffn_in) takes no loha: peft's LoHa adapts torch Linear layers, not Conv1D "
        "(offer lora, dora or ia3 there)"
    )


@pytest.mark.parametrize("with_lora", [True, False])
def test_the_methods_beside_lora_leave_peft_config_as_lora_made_it(with_lora):
    """DoRA, IA3 and LoHa are injected without a config of their own: LoRA's peft model keeps its one "default"
    config (what save_pretrained writes), and a model without LoRA gets no peft_config at all."""
    model = tiny_bert()
    offered = menu({"query": ["lora", "dora"], "value": ["ia3"], "ffn_in": ["loha"]})
    sites = [s for s in discover_sites(model, ["query", "value", "ffn_in"], offered) if s.layer == 0]
    chosen = {"L0.query": ("lora" if with_lora else "dora", 2), "L0.value": ("ia3", 1), "L0.ffn_in": ("loha", 2)}
    model = apply_plan(model, sites, plan_of(sites, chosen, offered), alpha_ratio=2.0, dropout=0.0, offered=offered)
    inner = model.get_base_model() if with_lora else model
    if with_lora:
        assert list(model.peft_config) == ["default"]
        assert sorted(model.peft_config["default"].target_modules) == ["encoder.layer.0.attention.self.query"]
        assert inner.__dict__.get("peft_config") is model.peft_config
    else:
        assert "peft_config" not in inner.__dict__
