"""The method registry: a new method is one Method, registered; the planner, the builder, the plot and the report
take it from there. The toy below is docs/architecture.md's worked example."""

import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from layerlens.analysis.comparison import plan_check_columns
from layerlens.errors import LayerLensError
from layerlens.lens.apply import apply_plan
from layerlens.lens.baseline import LayerLensBaseline
from layerlens.lens.sites import SITE_KINDS, discover_sites
from layerlens.methods import METHODS, Menu, Method, accepting, methods_for, register, unregister
from layerlens.planning.costs import SiteSpec, Workload
from layerlens.planning.planner import PlannerSettings, make_plan
from layerlens.planning.plot import plot_plan
from layerlens.settings import instantiate_node
from tests.conftest import compose_config

WORKLOAD = Workload(batch_size=8, tokens_per_batch=400.0, seq_len=60.0, num_heads=2, flops_per_s=1e10)


def attach_toy(site, size):
    site.module.register_parameter("toy", torch.nn.Parameter(torch.zeros(size, site.d_out)))


# A made-up method on the feed-forward block's output: `size` rows of its width, with made-up costs.
TOY = Method(
    name="toy",
    kinds=("ffn_block",),
    size_name="rows",
    colour="tab:red",
    dims=lambda module, profiled: (module.dense.out_features, module.dense.out_features),
    costs=lambda site, size, w: (size * site.d_out, 2.0 * size * site.d_out, w.tokens_per_batch * size),
    attach=attach_toy,
)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(TOY.name)


def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    )


def test_a_registered_method_is_planned_built_plotted_and_reported(toy, tmp_path):
    assert [method.name for method in methods_for("ffn_block")] == ["adapter", "toy"]  # by default
    model = tiny_bert()
    sites = discover_sites(model, ["query", "ffn_block"], offered=["lora", "toy"])
    assert [(s.name, s.method, s.d_in, s.d_out) for s in sites] == [
        ("L0.query", "lora", 32, 32),
        ("L0.ffn_block", "toy", 32, 32),
        ("L1.query", "lora", 32, 32),
        ("L1.ffn_block", "toy", 32, 32),
    ]
    specs = [
        SiteSpec(s.name, s.layer, s.kind, s.method, s.d_in, s.d_out, u) for s, u in zip(sites, [1.0, 4.0, 0.5, 2.0])
    ]
    # toy of size 4: 128 parameters; LoRA of rank 2 at 32x32: 128. Room for three of the four, and the toy at L1
    # (utility 2 * 4**0.5 = 4) is worth more than LoRA at either query (at most 1 * 2**0.5).
    plan = make_plan(specs, WORKLOAD, {"params": 400.0}, PlannerSettings(sizes={"lora": [2], "toy": [4]}))
    assert [(c.site, c.method, c.size) for c in plan.choices] == [
        ("L0.query", "lora", 2),
        ("L0.ffn_block", "toy", 4),
        ("L1.query", "none", 0),
        ("L1.ffn_block", "toy", 4),
    ]
    assert plan.choices[1].costs.as_dict() == pytest.approx(
        {
            "params": 128.0,
            "flops": 256.0,
            "memory_mb": (128 * 16 + 400 * 4 * 4) / 2**20,
            "latency_ms": 3 * 256 * 400 / 1e10 * 1e3,
        }
    )
    assert plan.metrics()["plan/consistency/toy"] == 1.0 and "plan/consistency/toy" in plan_check_columns()

    model = apply_plan(model, sites, plan, 2.0, 0.0)
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert {name for name in trainable if name.endswith(".toy")} == {
        "base_model.model.bert.encoder.layer.0.output.toy",
        "base_model.model.bert.encoder.layer.1.output.toy",
    }
    added = sum(n for name, n in trainable.items() if "lora_" in name or name.endswith(".toy"))
    assert added == plan.totals()["params"]
    assert plot_plan(plan, tmp_path / "plan.png", "toy").stat().st_size > 0


def test_where_two_methods_accept_a_kind_by_default_the_planners_sizes_choose_which_are_offered(toy):
    # docs/architecture.md's command line
    cfg = compose_config(
        "run", ["baseline=layerlens", "baseline.planner.sizes.adapter=[]", "+baseline.planner.sizes.toy=[1,2,4]"]
    )
    assert instantiate_node(cfg, "baseline").methods("ffn_block") == ["toy"]
    assert LayerLensBaseline(sites=["ffn_block"], planner={"sizes": {"adapter": [2], "toy": []}}).methods(
        "ffn_block"
    ) == ["adapter"]
    # both given sizes: both offered, the allocator chooses
    assert LayerLensBaseline(sites=["ffn_block"], planner={"sizes": {"adapter": [2], "toy": [1]}}).methods(
        "ffn_block"
    ) == ["adapter", "toy"]


def test_a_method_is_registered_once(toy):
    with pytest.raises(LayerLensError, match="^method 'toy' is registered already$"):
        register(TOY)


def test_a_methods_size_range_bounds_the_planners_sizes():
    register(replace(TOY, max_size=4, sizes=(1, 2, 4)))
    try:
        with pytest.raises(LayerLensError, match=r"^baseline.planner.sizes.toy must be integers from 1 to 4, got 8$"):
            PlannerSettings(sizes={"toy": [2, 8]})
    finally:
        unregister(TOY.name)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"name": "none"}, "method name must be an identifier other than 'none', got 'none'"),
        ({"kinds": "ffn_block"}, "method 'toy': kinds must be a non-empty list of site kinds, got 'ffn_block'"),
        ({"colour": ""}, "method 'toy': colour must be a non-empty string, got ''"),
        ({"costs": None}, "method 'toy': costs must be a function, got None"),
        ({"attach": None}, "method 'toy': give exactly one of wrap and attach, a function"),
        ({"wrap": lambda model, chosen, build: model}, "method 'toy': give exactly one of wrap and attach, a function"),
        ({"sizes": (0, 1)}, r"method 'toy': sizes must be a non-empty list of integers >= 1, got \(0, 1\)"),
        ({"max_size": 2}, r"method 'toy': sizes must be a non-empty list of integers from 1 to 2, got \(1, 2, 3"),
    ],
)
def test_a_method_is_checked_when_declared(change, message):
    with pytest.raises(LayerLensError, match="^" + message):
        replace(TOY, **change)


# Each check of a declaration, with its whole message: the field, what it allows and the value given.
@pytest.mark.parametrize(
    "change,message",
    [
        ({"name": "1x"}, "method name must be an identifier other than 'none', got '1x'"),
        ({"name": 3}, "method name must be an identifier other than 'none', got 3"),
        ({"kinds": ()}, "method 'toy': kinds must be a non-empty list of site kinds, got ()"),
        ({"kinds": {"ffn_block"}}, "method 'toy': kinds must be a non-empty list of site kinds, got {'ffn_block'}"),
        (
            {"kinds": ("ffn_block", "")},
            "method 'toy': kinds must be a non-empty list of site kinds, got ('ffn_block', '')",
        ),
        (
            {"kinds": ("ffn_block", 3)},
            "method 'toy': kinds must be a non-empty list of site kinds, got ('ffn_block', 3)",
        ),
        ({"size_name": ""}, "method 'toy': size_name must be a non-empty string, got ''"),
        ({"size_name": 3}, "method 'toy': size_name must be a non-empty string, got 3"),
        ({"colour": 3}, "method 'toy': colour must be a non-empty string, got 3"),
        ({"dims": None}, "method 'toy': dims must be a function, got None"),
        ({"attach": "attach"}, "method 'toy': give exactly one of wrap and attach, a function"),
        ({"max_size": True}, "method 'toy': max_size must be an integer >= 1 or None, got True"),
        ({"max_size": 2.0}, "method 'toy': max_size must be an integer >= 1 or None, got 2.0"),
        ({"max_size": 0}, "method 'toy': max_size must be an integer >= 1 or None, got 0"),
        ({"sizes": ()}, "method 'toy': sizes must be a non-empty list of integers >= 1, got ()"),
        ({"sizes": "12"}, "method 'toy': sizes must be a non-empty list of integers >= 1, got '12'"),
        ({"sizes": (1, True)}, "method 'toy': sizes must be a non-empty list of integers >= 1, got (1, True)"),
        ({"sizes": (1, 2.0)}, "method 'toy': sizes must be a non-empty list of integers >= 1, got (1, 2.0)"),
        (
            {"max_size": 3, "sizes": (3, 4)},
            "method 'toy': sizes must be a non-empty list of integers from 1 to 3, got (3, 4)",
        ),
        ({"bounded_by": ""}, "method 'toy': bounded_by must name a task setting or be None, got ''"),
        ({"bounded_by": 3}, "method 'toy': bounded_by must name a task setting or be None, got 3"),
        (
            {"default_kinds": "ffn_block"},
            "method 'toy': default_kinds must be a list of its kinds (ffn_block) or None, got 'ffn_block'",
        ),
        (
            {"default_kinds": {"ffn_block"}},
            "method 'toy': default_kinds must be a list of its kinds (ffn_block) or None, got {'ffn_block'}",
        ),
        (
            {"kinds": ("ffn_block", "attn_block"), "default_kinds": ("attention",)},
            "method 'toy': default_kinds must be a list of its kinds (ffn_block, attn_block) or None, got ('attention',)",
        ),
        ({"covers": [("ffn_block", ("ffn_in",))]}, "got [('ffn_block', ('ffn_in',))]"),
        ({"covers": {"attention": ("query",)}}, "got {'attention': ('query',)}"),
        ({"covers": {"ffn_block": "ffn_in"}}, "got {'ffn_block': 'ffn_in'}"),
        ({"covers": {"ffn_block": ()}}, "got {'ffn_block': ()}"),
        ({"covers": {"ffn_block": ("ffn_in", "ffn_block")}}, "got {'ffn_block': ('ffn_in', 'ffn_block')}"),
        ({"covers": {"ffn_block": ("ffn_in", "")}}, "got {'ffn_block': ('ffn_in', '')}"),
        ({"covers": {"ffn_block": ("ffn_in", 3)}}, "got {'ffn_block': ('ffn_in', 3)}"),
    ],
)
def test_each_check_of_a_declaration_names_the_field_and_the_value(change, message):
    if message.startswith("got"):
        message = (
            f"method 'toy': covers must map some of its kinds to the other site kinds their option adapts, {message}"
        )
    with pytest.raises(LayerLensError, match="^" + re.escape(message) + "$"):
        replace(TOY, **change)


def test_a_declarations_lists_are_kept_as_tuples_and_its_sizes_bounded_by_max_size():
    method = replace(
        TOY,
        kinds=["ffn_block", "attn_block"],
        sizes=[1, 3],
        max_size=3,
        default_kinds=["attn_block"],
        covers={"ffn_block": ["ffn_in", "ffn_out"]},
        bounded_by="max_length",
    )
    assert (method.kinds, method.sizes, method.default_kinds) == (("ffn_block", "attn_block"), (1, 3), ("attn_block",))
    assert method.covers == {"ffn_block": ("ffn_in", "ffn_out")}
    assert replace(TOY, kinds=["ffn_block"]).default_kinds == ("ffn_block",)  # None: every kind it accepts
    assert replace(TOY, default_kinds=[]).default_kinds == ()
    assert (method.size_range, TOY.size_range) == ("from 1 to 3", ">= 1")
    assert [method.allows(size) for size in (0, 1, 3, 4, True, 2.0)] == [False, True, True, False, False, False]
    assert [TOY.allows(size) for size in (0, 1, 10**6)] == [False, True, True]


def test_the_registry_and_the_planner_import_without_torch():
    # planning/ is pure numbers: every module of it, and the registry, without torch, Lightning or MLflow.
    code = (
        "import sys, pkgutil, importlib, layerlens.methods, layerlens.planning as p; "
        "[importlib.import_module(f'layerlens.planning.{m.name}') for m in pkgutil.iter_modules(p.__path__)]; "
        "print(sorted({'torch', 'peft', 'transformers', 'lightning', 'mlflow'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_each_site_kind_takes_by_default_the_one_method_it_always_has():
    # Last in this file: the toy registered by the tests above is gone again.
    assert list(METHODS) == ["lora", "adapter", "prefix", "dora", "ia3", "loha"]
    assert {kind: [method.name for method in methods_for(kind)] for kind in SITE_KINDS} == {
        **{kind: ["lora"] for kind in ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]},
        "attn_block": ["adapter"],
        "ffn_block": ["adapter"],
        "attention": ["prefix"],
    }
    # and accepts more where baseline.planner.menu offers them
    assert {kind: [method.name for method in accepting(kind)] for kind in SITE_KINDS} == {
        **{
            kind: ["lora", "dora", "ia3", "loha"] for kind in ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
        },
        "attn_block": ["adapter"],
        "ffn_block": ["lora", "adapter", "dora", "loha"],
        "attention": ["lora", "prefix", "dora", "loha"],
    }


def test_an_unknown_method_or_a_kind_without_a_default_method_is_refused_in_one_line(monkeypatch):
    from layerlens.methods import get_method, registry

    with pytest.raises(LayerLensError) as err:
        get_method("magic")
    assert str(err.value) == f"method 'magic' is unknown (choose from: {', '.join(METHODS)})"
    lora, dora = METHODS["lora"], METHODS["dora"]
    monkeypatch.setattr(registry, "METHODS", {"lora": replace(lora, default_kinds=()), "dora": dora})
    with pytest.raises(LayerLensError) as err:
        methods_for("query")
    assert str(err.value) == "site kind 'query' has no default method: name lora or dora in baseline.planner.menu.query"
    with pytest.raises(LayerLensError) as err:
        methods_for("attn_block")
    assert str(err.value) == "site kind 'attn_block': no registered method accepts it"
    # Two default methods, neither given sizes: the site takes the first registered (and none of its sizes).
    monkeypatch.setattr(registry, "METHODS", {"lora": lora, "dora": replace(dora, default_kinds=("query",))})
    assert [method.name for method in methods_for("query", offered=[])] == ["lora"]
    assert [method.name for method in methods_for("query")] == ["lora", "dora"]


def test_a_declaration_defaults_its_default_kinds_to_its_kinds_and_takes_a_largest_size_of_one():
    lora = METHODS["lora"]
    assert replace(lora, default_kinds=None).default_kinds == lora.kinds
    assert replace(lora, max_size=1, sizes=(1,)).max_size == 1
    assert list(Menu(("lora", "adapter"))) == ["lora", "adapter"] and len(Menu(("lora",))) == 1
