"""baseline=layerlens end to end on the tiny model: profile, plan, build exactly that model, train, record."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import LoraConfig, get_peft_model

from layerlens.errors import LayerLensError
from layerlens.lens.sites import discover_sites
from layerlens.paths import EMBEDDED_GLUE_DIR
from layerlens.pipeline import build_classifier, build_datamodule, count_parameters, plan_experiment, run_experiment
from layerlens.planning.choices import Plan
from layerlens.settings import resolve_settings
from layerlens.training.checkpoint_eval import evaluate_run
from layerlens.training.classifier import SequenceClassifier

ALL_METHODS = [
    "baseline.profile.num_batches=4",
    "budget.params_pct=5",
    "baseline.planner.sizes.lora=[2]",
    "baseline.planner.sizes.adapter=[2]",
    "baseline.planner.sizes.prefix=[2]",
]


def test_a_run_profiles_plans_trains_and_records_everything(compose_run, tracking_uri, tmp_path):
    cfg = compose_run("baseline=layerlens", "baseline.profile.num_batches=4")
    run_experiment(cfg, tmp_path)
    client = MlflowClient(tracking_uri)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for name in (
        "time/profile_s",
        "time/plan_s",
        "time/total_s",
        "profile/utility_cv",
        "profile/grad_corr",
        "profile/grad_corr_p",
        "profile/fisher_corr",
        "profile/fisher_corr_p",
        "plan/params",
        "plan/utilisation/params",
        "plan/method_diversity",
        "plan/rank_utility_spearman",
        "val/acc",
        "test/acc",
    ):
        assert name in metrics, name
    assert -1 <= metrics["profile/grad_corr"] <= 1 and 0 <= metrics["profile/grad_corr_p"] <= 1
    assert metrics["time/total_s"] == pytest.approx(
        metrics["time/profile_s"] + metrics["time/plan_s"] + metrics["time/train_s"]
    )
    assert {"plan.json", "plan.png", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    plan = Plan.from_json((tmp_path / "plan.json").read_text())
    assert plan.within_budgets() and plan.budgets["params"] == pytest.approx(0.0032 * metrics["params/backbone"], abs=1)
    head = 2 * 32 + 2  # the task head trains in every PEFT baseline and sits outside the budget
    assert metrics["params/trainable"] == plan.totals()["params"] + head == metrics["plan/params"] + head


def test_every_planned_method_trains_its_own_parameters_and_only_those(compose_run, tmp_path):
    cfg = compose_run("baseline=layerlens", "logger=none", *ALL_METHODS)
    s = resolve_settings(cfg)
    L.seed_everything(0)
    data = build_datamodule(s, s.backbone.tokenizer())
    adapted, _ = build_classifier(s, cfg, data, tmp_path)
    model = adapted.model
    plan = Plan.from_json((tmp_path / "plan.json").read_text())
    assert plan.method_counts().keys() == {"lora", "adapter", "prefix"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    markers = {"lora": "lora_", "adapter": "layerlens_adapter", "prefix": "layerlens_prefix"}
    assert all(any(m in n for m in markers.values()) or "classifier" in n for n in trainable)
    assert count_parameters(model, trainable_only=True) == plan.totals()["params"] + 2 * 32 + 2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = L.Trainer(
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(SequenceClassifier(model, 2, 1e-2, 0.0, 0.0), datamodule=data)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    for method, marker in markers.items():
        own = {n for n in trainable if marker in n}
        assert own and own <= changed, method
    assert changed <= trainable

    batch = next(iter(data.val_dataloader()))
    model.eval()
    reference = model(**batch).logits
    for marker in markers.values():
        params = [p for n, p in model.named_parameters() if marker in n]
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        assert not torch.allclose(model(**batch).logits, reference), marker
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)


def test_plan_entry_prints_the_plan_as_json_and_a_lora_only_plan_exports_a_peft_config(tmp_path, call_module):
    result = call_module(
        "plan",
        "model=tiny",
        "trainer=debug",
        "baseline.profile.num_batches=4",
        "baseline.sites=[query,value,attn_out]",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout)
    assert plan["method_counts"].keys() == {"lora"}
    config = LoraConfig.from_pretrained(str(tmp_path))
    assert config.rank_pattern and set(config.rank_pattern.values()) == {
        s["size"] for s in plan["sites"] if s["method"] == "lora"
    }
    from layerlens.models import RandomBertBackbone

    model = get_peft_model(RandomBertBackbone("tiny").classifier(2), config)  # no LayerLens code in the way
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == plan["totals"]["params"]


def test_a_finished_layerlens_run_is_evaluated_from_its_saved_plan(compose_run, tracking_uri, tmp_path):
    run_experiment(compose_run("baseline=layerlens", *ALL_METHODS), tmp_path)
    client = MlflowClient(tracking_uri)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    metrics = evaluate_run(tracking_uri, run.info.run_id, EMBEDDED_GLUE_DIR / "MRPC" / "dev.tsv")
    # MRPC's dev file is the run's test split: the model rebuilt from plan.json and the checkpoint scores it as the
    # run did, which it cannot if a site's method, size or scaling is rebuilt wrong.
    for name in ("acc", "f1", "mcc"):
        assert metrics[f"eval/MRPC_dev/{name}"] == pytest.approx(run.data.metrics[f"test/{name}"], abs=1e-6)


def test_more_profiling_batches_than_the_data_has_is_an_error(compose_run, tmp_path):
    cfg = compose_run("baseline=layerlens", "logger=none", "baseline.profile.num_batches=100000")
    with pytest.raises(
        LayerLensError,
        match=r"^baseline[.]profile[.]num_batches must be <= \d+ \(the training batches available\), got 100000$",
    ):
        plan_experiment(cfg, tmp_path)


def test_sites_are_found_in_both_heads():
    from layerlens.models import RandomBertBackbone

    for pooling in ("cls", "mean"):
        sites = discover_sites(RandomBertBackbone("tiny", pooling=pooling).classifier(2))
        assert len(sites) == 2 * 9 and Path(sites[0].path).suffix == ".query"
