"""The model-family table (layerlens/models/families.py): on every family each baseline adapts exactly the modules
the table names, the frozen-bottom cache runs where the table says it can, and a new family is one Family,
registered. The DistilBERT family below is docs/architecture.md's worked example."""

import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from transformers import AutoModelForSequenceClassification, DistilBertConfig

from layerlens.adaptation import AdaptContext
from layerlens.errors import LayerLensError
from layerlens.lens.apply import apply_plan, task_head
from layerlens.lens.sites import discover_sites, encoder_layers, layer_targets
from layerlens.models.families import (
    FAMILIES,
    LINEAR_KINDS,
    SITE_KINDS,
    Family,
    model_family,
    register_family,
    unregister_family,
)
from layerlens.planning.choices import Plan
from layerlens.settings import resolve_settings
from layerlens.training.checkpoint_eval import upgrade_config
from layerlens.training.frozen_bottom import FrozenBottomCache, cacheable
from tests.conftest import compose_config
from tests.test_backbones import FAMILIES as TINY_FAMILIES
from tests.test_backbones import batch, small_plan, tiny

BASELINES = ["full_ft", "lora", "lora_attention", "adalora", "layerlens"]
# What conf/baseline/ named before the table (peft's target_modules), to check BERT adapts what it did.
BEFORE = {
    "lora": ["query", "value"],
    "lora_attention": ["query", "key", "value", "attention.output.dense"],
    "adalora": r".*\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense"
    r"|output\.dense)",
}


def baseline(name: str, family: str, *overrides: str):
    sites = [f"baseline.sites=[{','.join(k for k in SITE_KINDS if k in FAMILIES[family].paths)}]"]
    cfg = compose_config(
        "run",
        [
            "model=tiny",
            "trainer=debug",
            "logger=none",
            f"baseline={name}",
            "budget=unlimited",
            *([*sites, "baseline.profile.num_batches=2"] if name == "layerlens" else []),
            *overrides,
        ],
    )
    return resolve_settings(cfg)


def adapt(name: str, family: str, tmp_path, *overrides: str, model=None, batches=None):
    """The tiny model of `family` (or `model`), its parameters and task head before adaptation, and what baseline
    `name` made of it (profiled, where it profiles, on `batches`: two of test_backbones.batch by default)."""
    s = baseline(name, family, *overrides)
    model = tiny(family) if model is None else model
    original = (task_head(model), {id(p) for p in model.parameters()})
    ctx = AdaptContext(
        backbone_params=sum(p.numel() for p in model.parameters()),
        budget=s.budget,
        total_steps=10,
        epochs=2,
        train_batches=lambda: batches or [batch(), batch()],
        output_dir=tmp_path,
    )
    return s, original, s.baseline.adapt(model, ctx)


def expected(name: str, s, family: Family, tmp_path) -> set[str]:
    """The modules the baseline should adapt, "<layer>.<path in the layer>", from the family table."""
    if name == "full_ft":
        return set()
    if name == "layerlens":
        plan = Plan.from_json((tmp_path / "plan.json").read_text())
        return {f"{c.layer}.{family.paths[c.kind]}" for c in plan.adapted()}
    return {f"{i}.{family.paths[kind]}" for i in range(2) for kind in s.baseline.target_kinds}


def adapted_modules(model, original: tuple[list[str], set[int]], candidates: set[str]) -> set[str]:
    """The modules of the encoder's layers that hold new parameters (each attributed to the deepest candidate it lies
    in); new parameters elsewhere may only be the task head's (peft's copy of it)."""
    head, original = original
    layers, _ = encoder_layers(model)
    found = set()
    for name, p in model.named_parameters():
        if id(p) in original:
            continue
        if not name.startswith(layers + "."):
            assert any(f".{module}." in f".{name}" for module in head), name
            continue
        inside = name[len(layers) + 1 :]
        owners = [c for c in candidates if inside.startswith(c + ".")]
        assert owners, f"{name}: added outside every module the family table names"
        found.add(max(owners, key=len))
    return found


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_each_baseline_adapts_exactly_the_modules_the_family_table_names(family, name, tmp_path):
    table = FAMILIES[family]
    assert model_family(tiny(family)) is table
    s, original, adapted = adapt(name, family, tmp_path)
    model = adapted.model
    everything = {f"{i}.{path}" for i in range(2) for path in table.paths.values()}
    wanted = expected(name, s, table, tmp_path)
    assert adapted_modules(model, original, everything) == wanted
    if name == "layerlens":  # unlimited budget: every site the family takes is adapted, each by its method
        assert {w.split(".", 1)[1] for w in wanted} == set(table.paths.values())
    trainable = [p for p in model.parameters() if p.requires_grad]
    if name == "full_ft":
        assert len(trainable) == len(list(model.parameters()))
    else:
        assert all(id(p) not in original[1] for p in trainable)  # the head too: peft's copy
    model.train()(**batch()).loss.backward()
    assert all(p.grad is not None for p in trainable)


@pytest.mark.parametrize("name", ["lora", "lora_attention", "adalora"])
def test_on_bert_peft_baselines_adapt_what_their_module_names_did_before_the_table(name, tmp_path):
    _, _, adapted = adapt(name, "bert", tmp_path)
    before = LoraConfig(target_modules=BEFORE[name])
    names = [n for n, _ in tiny("bert").named_modules()]
    assert {f"base_model.model.{n}" for n in names if check_target_module_exists(before, n)} == {
        n for n, m in adapted.model.named_modules() if hasattr(m, "lora_A")
    }


def test_deberta_names_its_projections_query_proj_key_proj_value_proj(tmp_path):
    _, _, adapted = adapt("lora_attention", "deberta-v2", tmp_path)
    assert sorted(
        {n.split(".layer.0.")[1] for n, m in adapted.model.named_modules() if hasattr(m, "lora_A") and ".layer.0." in n}
    ) == ["attention.output.dense", "attention.self.key_proj", "attention.self.query_proj", "attention.self.value_proj"]


@pytest.mark.parametrize(
    "name,kinds,message",
    [
        ("lora", "[attn_block]", r"baseline\.target_kinds: site kind 'attn_block' is not one of query, key, value"),
        ("adalora", "[query,query]", r"baseline\.target_kinds: query is listed twice"),
        ("lora", "[]", r"baseline\.target_kinds must be a non-empty list of site kinds"),
    ],
)
def test_target_kinds_that_name_no_linear_site_are_refused_in_one_line(name, kinds, message):
    with pytest.raises(LayerLensError, match=f"^{message}"):
        baseline(name, "bert", f"baseline.target_kinds={kinds}")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_frozen_bottom_cache_runs_where_the_family_table_allows_it(family):
    model, reference = tiny(family).eval(), tiny(family).eval()
    assert cacheable(model) == (FAMILIES[family].cache_refused is None) == (family != "deberta-v2")
    model.requires_grad_(False)
    if not cacheable(model):
        with pytest.raises(ValueError, match=f"not {family}: {FAMILIES[family].cache_refused}$"):
            FrozenBottomCache(model, 1)
        return
    cache = FrozenBottomCache(model, 1)
    for _ in range(2):  # the fill, then from the cache
        torch.testing.assert_close(model(**batch()).logits, reference(**batch()).logits, atol=1e-5, rtol=1e-5)
    assert cache.hits == cache.misses == 4


def test_an_older_runs_target_modules_are_read_as_the_site_kinds_they_named():
    for name, before in BEFORE.items():
        cfg = compose_config("run", ["model=tiny", "logger=none", f"baseline={name}"])
        kinds = list(cfg.baseline.target_kinds)
        cfg.baseline = OmegaConf.merge(
            {k: v for k, v in cfg.baseline.items() if k != "target_kinds"}, {"target_modules": before}
        )
        assert resolve_settings(upgrade_config(cfg)).baseline.target_kinds == kinds
    with pytest.raises(LayerLensError, match=r"^run config: baseline.target_modules \['dense'\] \(from before"):
        upgrade_config(OmegaConf.create({"baseline": {"target_modules": ["dense"]}}))


# Adding a family: where its layers keep each site kind, and why it refuses the kinds it has no module for.
DISTILBERT = Family(
    name="distilbert",
    model_types=("distilbert",),
    layers="transformer.layer",
    embeddings="embeddings",
    paths={
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "attn_out": "attention.out_lin",
        "ffn_in": "ffn.lin1",
        "ffn_out": "ffn.lin2",
    },
    refused={
        "attn_block": "its blocks' residual and layer norm are in TransformerBlock.forward, not a module",
        "ffn_block": "its blocks' residual and layer norm are in TransformerBlock.forward, not a module",
        "attention": "its MultiHeadSelfAttention is not the BERT-style self-attention a prefix extends",
    },
    cache_refused="not checked yet",
)


@pytest.fixture
def distilbert():
    register_family(DISTILBERT)
    yield DISTILBERT
    unregister_family(DISTILBERT.name)


def tiny_distilbert():
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(
        DistilBertConfig(
            dim=32, hidden_dim=64, n_layers=2, n_heads=2, vocab_size=100, dropout=0.0, attention_dropout=0.0
        )
    )


def test_a_registered_family_is_discovered_and_its_sites_built(distilbert):
    model = tiny_distilbert()
    assert model_family(model) is distilbert and not cacheable(model)
    sites = discover_sites(model, offered=["lora"])
    assert [(s.name, s.path, s.target, s.method, s.d_in, s.d_out) for s in sites if s.layer == 1] == [
        (
            "L1.query",
            "distilbert.transformer.layer.1.attention.q_lin",
            "transformer.layer.1.attention.q_lin",
            "lora",
            32,
            32,
        ),
        (
            "L1.key",
            "distilbert.transformer.layer.1.attention.k_lin",
            "transformer.layer.1.attention.k_lin",
            "lora",
            32,
            32,
        ),
        (
            "L1.value",
            "distilbert.transformer.layer.1.attention.v_lin",
            "transformer.layer.1.attention.v_lin",
            "lora",
            32,
            32,
        ),
        (
            "L1.attn_out",
            "distilbert.transformer.layer.1.attention.out_lin",
            "transformer.layer.1.attention.out_lin",
            "lora",
            32,
            32,
        ),
        ("L1.ffn_in", "distilbert.transformer.layer.1.ffn.lin1", "transformer.layer.1.ffn.lin1", "lora", 32, 64),
        ("L1.ffn_out", "distilbert.transformer.layer.1.ffn.lin2", "transformer.layer.1.ffn.lin2", "lora", 64, 32),
    ]
    assert len(sites) == 12 and task_head(model) == ["pre_classifier", "classifier"]
    with pytest.raises(
        LayerLensError,
        match=r"^site kind 'ffn_block' \(adapter\) does not work on distilbert models: "
        r"its blocks' residual",
    ):
        discover_sites(model, ["query", "ffn_block"], offered=["lora", "adapter"])

    built = apply_plan(model, sites, small_plan(sites, {"L0.query": ("lora", 2), "L1.ffn_in": ("lora", 3)}), 2.0, 0.0)
    assert {
        n.split("transformer.layer.")[1].split(".lora_A")[0]: p.shape[0]
        for n, p in built.named_parameters()
        if "lora_A" in n
    } == {"0.attention.q_lin": 2, "1.ffn.lin1": 3}
    built(**batch()).loss.backward()
    targets = layer_targets(tiny_distilbert(), list(LINEAR_KINDS), "baseline.target_kinds")
    assert len(targets) == 12 and "transformer.layer.1.ffn.lin2" in targets


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_plans_or_adapts_a_registered_family_at_the_modules_it_names(distilbert, name, tmp_path):
    s, original, adapted = adapt(name, "distilbert", tmp_path, model=tiny_distilbert())
    everything = {f"{i}.{path}" for i in range(2) for path in distilbert.paths.values()}
    wanted = expected(name, s, distilbert, tmp_path)
    assert adapted_modules(adapted.model, original, everything) == wanted
    if name == "layerlens":  # profiled and planned: an unlimited budget adapts every linear
        assert wanted == everything
    adapted.model.train()(**batch()).loss.backward()


def test_an_unregistered_family_is_gone_and_a_family_is_checked_when_declared(distilbert):
    unregister_family("distilbert")
    with pytest.raises(LayerLensError, match=r"^model: config.model_type 'distilbert' has no family"):
        discover_sites(tiny_distilbert())
    register_family(distilbert)  # for the fixture to remove
    with pytest.raises(LayerLensError, match=r"^family 'distilbert' is registered already$"):
        register_family(distilbert)
    with pytest.raises(LayerLensError, match=r"^family 'other': model type 'bert' is bert's$"):
        register_family(Family("other", ("bert",), "encoder.layer", "embeddings", FAMILIES["bert"].paths))
    with pytest.raises(
        LayerLensError,
        match=r"^family 'toy': site kind 'attention' must have either a path or a "
        r"reason it is refused, got neither$",
    ):
        Family("toy", ("toy",), "layers", "embed", {k: k for k in SITE_KINDS if k != "attention"})
    with pytest.raises(LayerLensError, match=r"^family 'toy': site kind 'mlp' is unknown"):
        Family("toy", ("toy",), "layers", "embed", {k: k for k in SITE_KINDS}, refused={"mlp": "none"})
