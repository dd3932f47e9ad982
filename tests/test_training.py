"""One real fit per baseline on the tiny model: what is trainable changes, what is frozen does not."""

import lightning as L
import pytest
import torch

from layerlens.models import RandomBertBackbone
from layerlens.pipeline import build_classifier, build_datamodule, count_parameters
from layerlens.settings import resolve_settings
from layerlens.training.classifier import SequenceClassifier
from layerlens.training.fine_tuning import decay_groups


def fit(compose_run, tmp_path, baseline: str, *overrides: str):
    cfg = compose_run(f"baseline={baseline}", "logger=none", *overrides)
    s = resolve_settings(cfg)
    L.seed_everything(s.seed)
    data = build_datamodule(s, s.backbone.tokenizer())
    adapted, backbone_params = build_classifier(s, cfg, data, tmp_path)
    model = adapted.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    module = SequenceClassifier(model, s.task.num_labels, s.baseline.lr, s.weight_decay, s.warmup_ratio)
    trainer = L.Trainer(
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=adapted.callbacks,
    )
    trainer.fit(module, datamodule=data)
    changed = {name: not torch.equal(before[name], p.detach()) for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return model, backbone_params, changed, trainable


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_full_ft_trains_every_weight(compose_run, tmp_path, pooling):
    model, backbone_params, changed, trainable = fit(compose_run, tmp_path, "full_ft", f"model.pooling={pooling}")
    assert trainable == set(changed)
    assert all(changed.values()), [name for name, moved in changed.items() if not moved]
    assert count_parameters(model, trainable_only=True) == backbone_params


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_lora_trains_only_adapters_and_head(compose_run, tmp_path, pooling):
    model, backbone_params, changed, trainable = fit(
        compose_run, tmp_path, "lora", "baseline.r=4", f"model.pooling={pooling}"
    )
    assert trainable and all(("lora_" in name) or ("classifier" in name) for name in trainable)
    assert any("lora_A" in name for name in trainable) and any("lora_B" in name for name in trainable)
    assert all(changed[name] for name in trainable), [name for name in trainable if not changed[name]]
    frozen_moved = [name for name, moved in changed.items() if moved and name not in trainable]
    assert frozen_moved == []
    lora_a = [p for name, p in model.named_parameters() if "lora_A" in name]
    assert lora_a[0].shape[0] == 4
    assert count_parameters(model, trainable_only=True) < 0.2 * backbone_params


def test_lora_targets_only_the_configured_modules(compose_run, tmp_path):
    _, _, _, trainable = fit(compose_run, tmp_path, "lora", "baseline.target_kinds=[query]")
    assert not any(".value." in name for name in trainable) and any(".query." in name for name in trainable)


def test_weight_decay_skips_biases_and_layer_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decayed, plain = decay_groups(model, 0.1)
    assert [p.shape for p in decayed["params"]] == [(4, 4)] and decayed["weight_decay"] == 0.1
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0


@pytest.mark.parametrize("num_labels", [2, 3])
def test_metrics_accuracy_f1_and_mcc(num_labels):
    from layerlens.training.classifier import task_metrics

    metrics = task_metrics(num_labels, prefix="val/")
    preds, labels = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0])
    scores = metrics(preds, labels)
    assert set(scores) == {"val/acc", "val/f1", "val/mcc"}
    assert scores["val/acc"] == pytest.approx(0.75)
    if num_labels == 2:  # F1 of the positive class: precision 1/2, recall 1/1
        assert scores["val/f1"] == pytest.approx(2 / 3)
    # TP 1, TN 2, FP 1, FN 0: (1*2 - 1*0) / sqrt(2 * 1 * 3 * 2); with 3 classes the unused one changes nothing
    assert scores["val/mcc"] == pytest.approx(2 / 12**0.5)


def test_a_pretrained_model_trains_with_dropout_on():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, vocab_size=10)
    ).eval()
    module = SequenceClassifier(model, 2, 1e-3, 0.0, 0.0)
    assert all(m.training for m in module.model.modules())


def test_mean_pooling_ignores_padding():
    torch.manual_seed(0)
    model = RandomBertBackbone("tiny", pooling="mean").classifier(2).eval()
    ids = torch.tensor([[101, 2000, 2001, 102]])
    short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    padded_ids = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    padded = model(input_ids=padded_ids, attention_mask=mask).logits
    assert torch.allclose(short, padded, atol=1e-5)
