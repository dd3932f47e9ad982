"""baseline=adalora: peft's AdaLoRA whose rank schedule really runs and ends within the parameter budget."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from layerlens.baselines.adalora import ParamBudgetAllocator
from layerlens.errors import LayerLensError
from layerlens.models.families import LINEAR_KINDS
from layerlens.pipeline import build_classifier, build_datamodule
from layerlens.settings import resolve_settings
from layerlens.training.callbacks import AdaLoraSchedule
from layerlens.training.classifier import SequenceClassifier

# 10 optimiser steps: tinit 2, pruning on steps 3..6 at every step, final allocation at step 7, 3 more steps.
SCHEDULE = (
    "trainer.limit_train_batches=5",
    "trainer.max_epochs=2",
    "baseline.tinit=0.2",
    "baseline.tfinal=0.3",
    "baseline.deltaT=1",
)
LIMIT = 2000  # added parameters; the tiny model's 12 adapted linears cost 908 per rank in all


def adapt(compose_run, tmp_path, *overrides: str):
    cfg = compose_run("baseline=adalora", "logger=none", *overrides)
    s = resolve_settings(cfg)
    L.seed_everything(s.seed)
    data = build_datamodule(s, s.backbone.tokenizer())
    adapted, _ = build_classifier(s, cfg, data, tmp_path)
    return s, data, adapted


class GradientSpy(Callback):
    """Runs after AdaLoRA's callback: were the step's gradients still there when it ran?"""

    def __init__(self):
        self.steps, self.grads_present = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        lora = [p for n, p in pl_module.model.named_parameters() if "lora_" in n]
        self.steps.append(trainer.global_step)
        self.grads_present.append(all(p.grad is not None for p in lora) and any(p.grad.abs().sum() > 0 for p in lora))


def kept_ranks(adapted) -> dict[str, int]:
    pattern = adapted.model.base_model.peft_config["default"].rank_pattern
    return {name: sum(mask) for name, mask in pattern.items()}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_adalora_fit_prunes_ranks_to_the_parameter_budget(compose_run, tmp_path, pooling):
    s, data, adapted = adapt(compose_run, tmp_path, *SCHEDULE, f"budget.params={LIMIT}", f"model.pooling={pooling}")
    model, schedule = adapted.model, adapted.callbacks[0]
    tuner = model.base_model
    assert isinstance(schedule, AdaLoraSchedule) and isinstance(tuner.rankallocator, ParamBudgetAllocator)
    config = tuner.peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal, config.init_r) == (10, 2, 3, 4)
    calls = []
    update = tuner.update_and_allocate
    tuner.update_and_allocate = lambda step: (calls.append(step), update(step))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    spy = GradientSpy()
    module = SequenceClassifier(model, s.task.num_labels, s.baseline.lr, s.weight_decay, s.warmup_ratio)
    trainer = L.Trainer(
        max_steps=10,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*adapted.callbacks, spy],
    )
    trainer.fit(module, datamodule=data)

    # update_and_allocate ran once per optimiser step, while that step's gradients were still there
    assert calls == list(range(1, 11)) and spy.steps == calls and all(spy.grads_present)

    changed = {name: not torch.equal(before[name], p.detach()) for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(("lora_" in name) or ("classifier" in name) for name in trainable)
    assert not any("pooler" in name for name in trainable)
    assert [name for name, moved in changed.items() if moved and name not in trainable] == []
    for kind in ("lora_A", "lora_B", "classifier"):
        moved = [changed[name] for name in trainable if kind in name]
        assert moved and all(moved), kind
    assert any(changed[name] for name in trainable if "lora_E" in name)
    assert len({name for name in trainable if "lora_E" in name}) == 12  # 6 linears x 2 layers, no pooler

    # the schedule ran: ranks moved away from init_r, unevenly, and pruned triplets are zero
    ranks = kept_ranks(adapted)
    assert len(ranks) == 12 and all(0 <= r <= 4 for r in ranks.values()) and len(set(ranks.values())) > 1
    params = dict(model.base_model.model.named_parameters())
    assert {name: int((params[name] != 0).sum()) for name in ranks} == ranks

    # the final budget: the largest prefix of triplets by importance that fits the limit
    costs = schedule.costs
    final = sum(rank * costs[name] for name, rank in ranks.items())
    assert LIMIT - max(costs.values()) < final <= LIMIT
    assert (schedule.final_rank, schedule.final_params) == (sum(ranks.values()), final)


def test_budget_sets_the_final_rank_and_init_r(compose_run, tmp_path):
    s, _, adapted = adapt(compose_run, tmp_path)  # the default budget: a share of the tiny backbone
    assert s.baseline.target_kinds == list(LINEAR_KINDS)
    m = adapted.metrics
    limit = s.budget.params_limit(
        sum(p.numel() for n, p in adapted.model.named_parameters() if "lora_" not in n and "modules_to_save" not in n)
    )
    assert m["adalora/params_limit"] == limit
    assert m["adalora/avg_target_rank"] == pytest.approx(limit / 908)
    assert m["adalora/target_rank"] == int(limit / 908 * 12)
    assert m["adalora/init_r"] > m["adalora/avg_target_rank"] and m["adalora/init_params"] > limit
    assert adapted.model.base_model.rankallocator.target_bgt == m["adalora/target_rank"]


def test_without_a_parameter_limit_peft_allocates_target_r_ranks_per_module(compose_run, tmp_path):
    _, _, adapted = adapt(compose_run, tmp_path, "budget=unlimited", "baseline.target_r=3")
    allocator = adapted.model.base_model.rankallocator
    assert type(allocator).__name__ == "RankAllocator" and allocator.target_bgt == 36
    assert adapted.metrics["adalora/init_r"] == 5  # ceil(1.5 x 3)


def test_orthogonal_regulariser_is_added_to_the_loss(compose_run, tmp_path):
    _, _, adapted = adapt(compose_run, tmp_path, "model.pooling=mean")
    model = adapted.model.eval()
    ids = torch.tensor([[101, 2000, 2001, 102]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([1])}
    with torch.no_grad():
        regularised = model(**batch).loss
        model.base_model.peft_config["default"].orth_reg_weight = 0.0
        plain = model(**batch).loss
    assert regularised > plain


@pytest.mark.parametrize(
    "override,field",
    [
        ("baseline.init_r=0", "baseline.init_r"),
        ("baseline.target_r=0", "baseline.target_r"),
        ("baseline.init_ratio=1", "baseline.init_ratio"),
        ("baseline.tinit=0.6", "baseline.tinit"),  # with tfinal 0.5: no steps left for pruning
        ("baseline.tfinal=1.0", "baseline.tfinal"),
        ("baseline.deltaT=0", "baseline.deltaT"),
        ("baseline.beta1=1.0", "baseline.beta1"),
        ("baseline.orth_reg_weight=-1", "baseline.orth_reg_weight"),
        ("baseline.lora_dropout=1.0", "baseline.lora_dropout"),
        ("baseline.lr=0", "baseline.lr"),
    ],
)
def test_bad_config_names_the_field(compose_run, override, field):
    with pytest.raises(LayerLensError, match=rf"^{field.replace('.', '[.]')} "):
        resolve_settings(compose_run("baseline=adalora", "logger=none", override))


@pytest.mark.parametrize(
    "override,start",
    [("baseline.target_kinds=[nowhere]", "baseline.target_kinds: "), ("budget.params=50", "budget.params must be >= ")],
)
def test_bad_targets_or_a_budget_below_one_rank_fail_in_one_line(compose_run, tmp_path, override, start):
    with pytest.raises(LayerLensError, match=rf"^{start.replace('.', '[.]')}") as err:
        adapt(compose_run, tmp_path, override)
    assert "\n" not in str(err.value)


def test_the_best_checkpoint_is_taken_only_after_the_final_rank_allocation(compose_run, tracking_uri, tmp_path):
    from layerlens.pipeline import run_experiment

    # trainer=debug: 2 epochs of 3 steps; tfinal 0.2 puts the final allocation at step 6 - 1 = 5, after epoch 0.
    run_experiment(compose_run("baseline=adalora", "baseline.tinit=0.1", "baseline.tfinal=0.2"), tmp_path)
    saved = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert saved == ["best-epoch=1-step=6.ckpt"]


def test_a_checkpoint_keeps_the_rank_allocators_state(compose_run, tmp_path):
    """Resuming mid-budgeting must continue peft's importance averages and rank pattern, which live outside the
    model's weights: the schedule callback carries them through a Lightning checkpoint."""

    def fit(adapted, s, data, steps, ckpt_path=None):
        module = SequenceClassifier(adapted.model, s.task.num_labels, s.baseline.lr, s.weight_decay, s.warmup_ratio)
        trainer = L.Trainer(
            max_steps=steps,
            limit_val_batches=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=adapted.callbacks,
        )
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return trainer

    s, data, first = adapt(compose_run, tmp_path, *SCHEDULE, f"budget.params={LIMIT}")
    fit(first, s, data, steps=5).save_checkpoint(tmp_path / "mid.ckpt")  # pruning since step 3
    s, data, second = adapt(compose_run, tmp_path, *SCHEDULE, f"budget.params={LIMIT}")
    fit(second, s, data, steps=5, ckpt_path=tmp_path / "mid.ckpt")  # restores, then has no step left

    saved, restored = first.callbacks[0].state_dict(), second.callbacks[0].state_dict()
    assert restored["last_step"] == 5 and restored["rank_pattern"] == saved["rank_pattern"] is not None
    for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        assert saved[key] and saved[key].keys() == restored[key].keys()
        assert all(torch.equal(saved[key][name], restored[key][name]) for name in saved[key]), key
