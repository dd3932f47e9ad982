"""The frozen-bottom cache: the same outputs as running the frozen layers, computed once, and no gradient below."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from layerlens.training.frozen_bottom import FrozenBottomCache


def tiny_classifier(layers: int = 3):
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    return BertForSequenceClassification(config)


def batch(rows: list[list[int]], labels: list[int]) -> dict:
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    types = torch.tensor([[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": torch.tensor(labels)}


def freeze_below(model, depth: int):
    for name, p in model.named_parameters():
        below = name.startswith("bert.embeddings.") or any(name.startswith(f"bert.encoder.layer.{i}.")
                                                           for i in range(depth))
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
        assert torch.allclose(alone, expected[i:i + 1], atol=1e-5)


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
    from layerlens.pipeline import build_classifier, build_datamodule
    from layerlens.planning.plan import Plan
    from layerlens.settings import resolve_settings
    from layerlens.sites import encoder_layers

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
