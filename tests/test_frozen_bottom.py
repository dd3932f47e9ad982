"""The frozen-bottom cache: the same outputs as running the frozen layers, computed once, and no gradient below."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from layerlens.training.frozen_bottom import MB, FrozenBottomCache, cacheable


def tiny_classifier(layers: int = 3):
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        hidden_dropout_prob=0.3,
        attention_probs_dropout_prob=0.3,
    )
    return BertForSequenceClassification(config)


def batch(rows: list[list[int]], labels: list[int]) -> dict:
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    types = torch.tensor([[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": torch.tensor(labels)}


def freeze_below(model, depth: int):
    for name, p in model.named_parameters():
        below = name.startswith("bert.embeddings.") or any(
            name.startswith(f"bert.encoder.layer.{i}.") for i in range(depth)
        )
        p.requires_grad_(not below)


ROWS = [[5, 6, 7, 8, 9], [11, 12, 13], [21, 22, 23, 24, 25, 26, 27]]


def test_cached_outputs_equal_the_frozen_layers_run_without_dropout_in_any_batching():
    reference, cached = tiny_classifier(), tiny_classifier()
    for model in (reference, cached):
        freeze_below(model, 2)
    FrozenBottomCache(cached, 2)
    reference.eval()
    cached.eval()
    whole = batch(ROWS, [0, 1, 0])
    expected = reference(**whole).logits
    assert torch.allclose(cached(**whole).logits, expected, atol=1e-5)  # fills the cache
    # Hits, in another order and padding: each row alone, reversed.
    for i in reversed(range(len(ROWS))):
        alone = cached(**batch([ROWS[i]], [0])).logits
        assert torch.allclose(alone, expected[i : i + 1], atol=1e-5)


def test_each_row_is_computed_once_and_later_passes_hit_the_cache():
    model = tiny_classifier()
    freeze_below(model, 2)
    cache = FrozenBottomCache(model, 2)
    model.train()
    model(**batch(ROWS, [0, 1, 0]))
    assert (cache.misses, cache.hits, len(cache.rows)) == (3, 0, 3)
    model(**batch(ROWS[::-1], [0, 1, 0]))
    assert (cache.misses, cache.hits) == (3, 3)


def test_the_bottom_runs_without_dropout_while_the_top_keeps_it():
    model = tiny_classifier()
    freeze_below(model, 2)
    FrozenBottomCache(model, 2)
    model.train()
    inputs = batch(ROWS, [0, 1, 0])
    model(**inputs)  # cached
    outputs = [model(**inputs).logits for _ in range(2)]
    assert not torch.allclose(*outputs)  # dropout above the cache still draws
    bottom = [m.training for m in model.bert.encoder.layer[:2]] + [model.bert.embeddings.training]
    assert all(bottom)  # the cache leaves the modules' modes as they were


def test_training_changes_only_the_top_and_no_gradient_reaches_the_bottom():
    model = tiny_classifier()
    freeze_below(model, 2)
    FrozenBottomCache(model, 2)
    model.train()
    top = model.bert.encoder.layer[2].attention.self.query.weight
    before = top.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model(**batch(ROWS, [0, 1, 0])).loss.backward()
        optimizer.step()
    assert not torch.equal(before, top)
    assert all(p.grad is None for p in model.bert.encoder.layer[:2].parameters())


def test_a_trainable_parameter_below_the_cache_is_refused():
    model = tiny_classifier()
    freeze_below(model, 1)
    with pytest.raises(ValueError, match=r"bottom 2 layers must be frozen.*bert.encoder.layer.1"):
        FrozenBottomCache(model, 2)


def test_the_fast_budget_plans_above_the_bottom_and_training_runs_from_the_cache(compose_run, tmp_path):
    from layerlens.lens.sites import encoder_layers
    from layerlens.pipeline import build_classifier, build_datamodule
    from layerlens.planning.choices import Plan
    from layerlens.settings import resolve_settings

    cfg = compose_run("baseline=layerlens", "budget=fast", "logger=none", "baseline.profile.num_batches=4")
    s = resolve_settings(cfg)
    data = build_datamodule(s, s.backbone.tokenizer())
    adapted, _ = build_classifier(s, cfg, data, tmp_path)
    plan = Plan.from_json((tmp_path / "plan.json").read_text())
    # tiny: 2 layers, 2 epochs. Adapting layer 0 would cost 2/3 of full fine-tuning's time: over budget.train_time_pct.
    assert plan.lowest_adapted_layer() == 1 and plan.train_time_pct <= cfg.budget.train_time_pct
    assert adapted.metrics["plan/train_time_pct"] == plan.train_time_pct
    _, layers = encoder_layers(adapted.model)
    cache = layers[0].forward.__self__
    assert isinstance(cache, FrozenBottomCache) and len(cache.bottom) == 1
    model = adapted.model.train()
    bottom = {n: p.detach().clone() for n, p in layers[0].named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = next(iter(data.train_dataloader()))
    for _ in range(2):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    rows = len(batch["labels"])
    assert (cache.misses, cache.hits) == (rows, rows)  # computed on the first pass, served on the second
    assert all(torch.equal(p, bottom[n]) for n, p in layers[0].named_parameters())


# Found by mutation testing (experiments/mutation.py): what the tests above left free to change.


def test_a_trainable_embedding_is_refused_and_the_first_trainable_parameter_below_is_named():
    model = tiny_classifier()
    freeze_below(model, 2)
    model.bert.embeddings.LayerNorm.weight.requires_grad_(True)
    model.bert.encoder.layer[1].output.dense.bias.requires_grad_(True)
    with pytest.raises(
        ValueError,
        match=r"^the bottom 2 layers must be frozen to be cached, "
        r"but bert\.embeddings\.LayerNorm\.weight is trainable$",
    ):
        FrozenBottomCache(model, 2)


@pytest.mark.parametrize("depth", [0, 4])
def test_a_depth_outside_the_encoders_layers_is_refused(depth):
    model = tiny_classifier()
    freeze_below(model, 3)
    with pytest.raises(ValueError, match=rf"^depth must be in \[1, 3\] \(the encoder's layers\), got {depth}$"):
        FrozenBottomCache(model, depth)


@pytest.mark.parametrize("depth", [1, 3])
def test_the_lowest_and_the_highest_depth_serve_the_frozen_layers_outputs(depth):
    reference, cached = tiny_classifier().eval(), tiny_classifier().eval()
    freeze_below(cached, depth)
    FrozenBottomCache(cached, depth)
    inputs = batch(ROWS, [0, 1, 0])
    for _ in range(2):  # the fill, then from the cache
        torch.testing.assert_close(cached(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_an_encoder_of_another_family_is_refused_naming_it():
    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(
        DebertaV2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
        )
    )
    model.requires_grad_(False)
    with pytest.raises(
        ValueError,
        match="^the frozen-bottom cache supports bert, roberta, llama, mistral, qwen2 models, not deberta-v2: "
        "its encoder passes relative positions to every layer",
    ):
        FrozenBottomCache(model, 1)


def frozen_classifier(depth: int):
    model = tiny_classifier()
    freeze_below(model, depth)
    return model


def test_the_cache_counts_its_bytes_and_past_its_limit_computes_rows_each_time():
    assert FrozenBottomCache(frozen_classifier(2), 2).max_bytes == 2048 * MB  # by default, 2 GiB
    model = frozen_classifier(2).eval()
    row_bytes = [len(r) * 32 * 4 for r in ROWS]  # each row's real tokens, 32 float32 values each
    cache = FrozenBottomCache(model, 2, max_mb=(row_bytes[0] + row_bytes[1]) / MB)  # room for the first two
    inputs = batch(ROWS, [0, 1, 0])
    first = model(**inputs).logits
    assert (len(cache.rows), cache.bytes) == (2, row_bytes[0] + row_bytes[1])  # the limit reached: the third not kept
    second = model(**inputs).logits  # the third row is missing, so the whole batch is computed again
    assert (cache.misses, cache.hits) == (6, 0)
    torch.testing.assert_close(second, first)


def test_the_cache_needs_input_ids_and_the_base_model_called():
    model = frozen_classifier(2)
    FrozenBottomCache(model, 2)
    message = "^FrozenBottomCache needs the model called with input_ids$"
    with pytest.raises(RuntimeError, match=message):  # the encoder alone: the base model's inputs never seen
        model.bert.encoder(torch.zeros(1, 5, 32))
    with pytest.raises(RuntimeError, match=message):
        model(inputs_embeds=torch.randn(1, 5, 32), attention_mask=torch.ones(1, 5, dtype=torch.long))


def test_the_base_model_called_by_keyword_and_without_a_mask_is_served_whole_rows():
    reference, cached = tiny_classifier().eval(), frozen_classifier(2).eval()
    cache = FrozenBottomCache(cached, 2)
    ids = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 13, 14, 15]])  # 2 rows of 5 tokens: no padding, no mask
    expected = reference.bert(input_ids=ids).last_hidden_state
    for _ in range(2):  # the fill, then from the cache
        torch.testing.assert_close(cached.bert(input_ids=ids).last_hidden_state, expected, atol=1e-5, rtol=1e-5)
    assert (cache.misses, cache.hits) == (2, 2)
    assert sorted(row.shape[0] for row in cache.rows.values()) == [5, 5]


def test_rows_of_the_same_tokens_with_other_token_types_are_cached_apart():
    reference, cached = tiny_classifier().eval(), frozen_classifier(2).eval()
    cache = FrozenBottomCache(cached, 2)
    ids = torch.tensor([[5, 6, 7, 8, 9]] * 2)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]),
    }
    expected = reference(**inputs).logits
    assert not torch.allclose(expected[0], expected[1])  # the token types matter
    for _ in range(2):  # the fill, then from the cache
        torch.testing.assert_close(cached(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
    assert (len(cache.rows), cache.misses, cache.hits) == (2, 2, 2)


def test_the_cache_serves_a_bare_encoder_and_refuses_its_trainable_embeddings():
    reference, encoder = tiny_classifier().bert.eval(), tiny_classifier().bert.eval()  # BertModel: no head around
    encoder.requires_grad_(False)
    encoder.embeddings.LayerNorm.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"but embeddings\.LayerNorm\.weight is trainable$"):
        FrozenBottomCache(encoder, 2)
    encoder.requires_grad_(False)
    cache = FrozenBottomCache(encoder, 2)
    ids = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 13, 14, 15]])
    for _ in range(2):  # the fill, then from the cache
        torch.testing.assert_close(
            encoder(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state, atol=1e-5, rtol=1e-5
        )
    assert (cache.misses, cache.hits) == (2, 2)


def test_bert_and_roberta_are_cacheable_and_deberta_is_not():
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    assert cacheable(tiny_classifier())
    assert cacheable(RobertaForSequenceClassification(RobertaConfig(**sizes)))
    assert not cacheable(DebertaV2ForSequenceClassification(DebertaV2Config(**sizes)))
