"""Sites and methods on every supported model family (BERT, RoBERTa, DeBERTa-v2/v3), on tiny random models."""

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    RobertaConfig,
)

from layerlens.errors import LayerLensError
from layerlens.lens.apply import apply_plan, task_head
from layerlens.lens.sites import discover_sites
from layerlens.methods import method_for
from layerlens.methods.layers.prefix import attach_prefix
from layerlens.models import HubBackbone
from layerlens.models.heads import MeanPoolingClassifier
from layerlens.planning.choices import Choice, Plan
from layerlens.planning.costs import Costs
from tests.conftest import compose_config

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=100,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
CONFIGS = {
    "bert": lambda **kw: BertConfig(**TINY, **kw),
    "roberta": lambda **kw: RobertaConfig(**TINY, **kw),
    # as deberta-v3-base: relative attention with both position terms, log buckets and shared keys
    "deberta-v2": lambda **kw: DebertaV2Config(
        **TINY,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=16,
        max_relative_positions=-1,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        **kw,
    ),
}
FAMILIES = list(CONFIGS)
PROJECTIONS = {
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
}
PREFIX_FAMILIES = ["bert", "roberta"]
HEADS = {"bert": ["classifier"], "roberta": ["classifier"], "deberta-v2": ["pooler", "classifier"]}


def tiny(family: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(CONFIGS[family](num_labels=2, **kw))


def batch() -> dict:
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (4, 7))  # above RoBERTa's padding id (1)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def expected_paths(family: str) -> dict[str, str]:
    query, key, value = (f"attention.self.{p}" for p in PROJECTIONS[family])
    paths = {
        "query": query,
        "key": key,
        "value": value,
        "attn_out": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "attn_block": "attention.output",
        "ffn_block": "output",
        "attention": "attention.self",
    }
    return {kind: path for kind, path in paths.items() if family in PREFIX_FAMILIES or kind != "attention"}


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_are_found_at_each_familys_module_paths(family):
    model = tiny(family)
    assert model.config.model_type == family
    sites = discover_sites(model)
    paths = expected_paths(family)
    assert [s.name for s in sites] == [f"L{i}.{kind}" for i in range(2) for kind in paths]
    modules = dict(model.named_modules())
    for site in sites:
        suffix = f"encoder.layer.{site.layer}.{paths[site.kind]}"
        assert site.path.endswith("." + suffix) and site.target == suffix, site.name
        assert modules[site.path] is site.module and site.method == method_for(site.kind).name
    dims = {s.kind: (s.d_in, s.d_out) for s in sites if s.layer == 0}
    assert dims["query"] == (32, 32) and dims["ffn_in"] == (32, 64) and dims["ffn_out"] == (64, 32)
    assert dims["attn_block"] == dims["ffn_block"] == (32, 32)


def test_deberta_refuses_the_prefix_in_one_line_naming_kind_and_family():
    with pytest.raises(
        LayerLensError,
        match=r"^site kind 'attention' \(prefix\) does not work on deberta-v2 models: "
        r"its disentangled attention adds relative-position scores",
    ) as err:
        discover_sites(tiny("deberta-v2"), ["query", "attention"])
    assert "\n" not in str(err.value)
    with pytest.raises(LayerLensError, match=r"^DisentangledSelfAttention is not a BERT-style self-attention"):
        attach_prefix(tiny("deberta-v2").deberta.encoder.layer[0].attention.self, 2)


def test_a_model_family_without_a_site_table_is_an_error():
    model = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=2, vocab_size=100)
    )
    with pytest.raises(
        LayerLensError,
        match=r"^model: config.model_type 'distilbert' has no family in "
        r"layerlens/models/families.py \(supported: bert, roberta, deberta-v2, llama, mistral, qwen2, gpt2\)$",
    ):
        discover_sites(model)


def small_plan(sites, sizes: dict[str, tuple[str, int]]) -> Plan:
    zero = Costs(0.0, 0.0, 0.0, 0.0)
    return Plan(
        [Choice(s.name, s.layer, s.kind, s.method, *sizes.get(s.name, ("none", 0)), 1.0, zero) for s in sites], {}, 0.0
    )


PLAN = {
    "L0.query": ("lora", 2),
    "L1.value": ("lora", 3),
    "L1.ffn_out": ("lora", 2),
    "L0.attn_block": ("adapter", 2),
    "L1.ffn_block": ("adapter", 3),
}
MARKERS = ("lora_", "layerlens_adapter", "layerlens_prefix")


def within_layers(name: str, marker: str) -> str:
    """ "x.encoder.layer.1.output.dense.lora_A.default.weight" -> "1.output.dense" (for marker ".lora_A")."""
    return name.split("encoder.layer.")[1].split(marker)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_plan_builds_trains_its_own_parameters_and_the_head_only(family):
    model = tiny(family)
    sites = discover_sites(model)
    assert task_head(model) == HEADS[family]
    plan_sizes = {**PLAN, **({"L1.attention": ("prefix", 2)} if family in PREFIX_FAMILIES else {})}
    model = apply_plan(model, sites, small_plan(sites, plan_sizes), alpha_ratio=2.0, dropout=0.0).train()

    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    head = {n for n in trainable if not any(m in n for m in MARKERS)}
    assert {n.split(".")[2] for n in head} == set(HEADS[family])  # base_model.model.<head module>...: all of it
    paths = expected_paths(family)
    ranks = {within_layers(n, ".lora_A"): p.shape[0] for n, p in params.items() if "lora_A" in n}
    assert ranks == {f"0.{paths['query']}": 2, f"1.{paths['value']}": 3, f"1.{paths['ffn_out']}": 2}
    adapters = {within_layers(n, ".layerlens_adapter") for n in trainable if "layerlens_adapter" in n}
    assert adapters == {"0.attention.output", "1.output"}
    assert any("layerlens_prefix" in n for n in trainable) == (family in PREFIX_FAMILIES)

    before = {n: p.detach().clone() for n, p in params.items()}
    optimiser = torch.optim.AdamW([params[n] for n in trainable], lr=1e-2, weight_decay=0.0)
    for _ in range(2):  # LoRA's A and the adapter's down see a gradient once B and up have left zero
        optimiser.zero_grad()
        model(**batch()).loss.backward()
        optimiser.step()
    changed = {n for n, p in params.items() if not torch.equal(before[n], p.detach())}
    assert changed == trainable


@pytest.mark.parametrize("alpha_ratio", [2.0, 0.5])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_lora_site_is_scaled_by_the_alpha_ratio_whatever_its_rank(family, alpha_ratio):
    """lora_alpha = alpha_ratio * rank per site, so that peft's scaling lora_alpha / rank is alpha_ratio at every
    rank; one lora_alpha for all (alpha_ratio * the largest rank) would scale the smaller ranks up."""
    model = tiny(family)
    sites = discover_sites(model)
    ranks = {"L0.query": 1, "L0.ffn_in": 3, "L1.value": 8, "L1.attn_out": 2}  # 8: the largest, not the first
    model = apply_plan(
        model,
        sites,
        small_plan(sites, {name: ("lora", r) for name, r in ranks.items()}),
        alpha_ratio=alpha_ratio,
        dropout=0.0,
    )
    by_path = {s.path: s.name for s in sites}
    found = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and name in by_path:
            found[by_path[name]] = (module.r["default"], module.scaling["default"])
    assert found == {name: (r, alpha_ratio) for name, r in ranks.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_an_adapter_only_plan_trains_the_adapters_and_the_head(family):
    model = tiny(family)
    sites = discover_sites(model, ["ffn_block"])
    model = apply_plan(model, sites, small_plan(sites, {"L0.ffn_block": ("adapter", 2)}), 2.0, 0.0)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(HEADS[family]) | {model.base_model_prefix}
    assert all(
        "layerlens_adapter" in n
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith(model.base_model_prefix)
    )


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", PREFIX_FAMILIES)
def test_the_prefix_ignores_padding_and_matches_across_attention_implementations(family, attn):
    model = tiny(family, attn_implementation=attn).eval()
    reference = tiny(family, attn_implementation="eager" if attn == "sdpa" else "sdpa").eval()
    plain = model(**batch()).logits
    for m in (model, reference):
        torch.manual_seed(2)
        for site in discover_sites(m, ["attention"]):
            attach_prefix(site.module, 3)
    prefixed = model(**batch()).logits
    assert not torch.allclose(prefixed, plain)
    assert torch.allclose(prefixed, reference(**batch()).logits, atol=1e-5)
    ids = batch()["input_ids"][:1, :4]
    padded = torch.cat([ids, torch.randint(3, 100, (1, 3))], dim=1)
    mask = torch.tensor([[1] * 4 + [0] * 3])
    assert torch.allclose(model(input_ids=padded, attention_mask=mask).logits, model(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_hub_backbone_loads_each_family_from_a_local_folder(family, pooling, tmp_path):
    AutoModel.from_config(CONFIGS[family]()).save_pretrained(tmp_path)  # a bare encoder, as hub checkpoints are
    model = HubBackbone(family, str(tmp_path), pooling).classifier(3)
    assert isinstance(model, MeanPoolingClassifier) == (pooling == "mean")
    if pooling == "mean":
        assert getattr(model.encoder, "pooler", None) is None  # no unused [CLS] pooler parameters
    assert task_head(model) == (["classifier"] if pooling == "mean" else HEADS[family])
    assert len(discover_sites(model, ["query", "ffn_block"])) == 4
    assert model(**batch()).logits.shape == (4, 3)


@pytest.mark.parametrize(
    "option,location",
    [
        ("bert_base", "bert-base-uncased"),
        ("roberta_base", "roberta-base"),
        ("deberta_v3_base", "microsoft/deberta-v3-base"),
    ],
)
def test_hub_model_configs_compose_without_the_hub(option, location):
    cfg = compose_config("run", [f"model={option}"])
    backbone = instantiate(cfg.model)  # names the checkpoint; nothing is downloaded until tokenizer()/classifier()
    assert isinstance(backbone, HubBackbone)
    assert (backbone.name, backbone.location(), backbone.pooling) == (option, location, "cls")


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_dropout_reaches_every_lora_site(family):
    model = tiny(family)
    sites = discover_sites(model)
    model = apply_plan(
        model,
        sites,
        small_plan(sites, {"L0.query": ("lora", 2), "L1.value": ("lora", 3)}),
        alpha_ratio=2.0,
        dropout=0.25,
    )
    dropouts = [module.lora_dropout["default"] for module in model.modules() if hasattr(module, "lora_dropout")]
    assert len(dropouts) == 2 and {d.p for d in dropouts} == {0.25}
