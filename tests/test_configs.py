"""Every option of every config group composes and turns into its objects."""

import json

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from layerlens.analysis.comparison import Target
from layerlens.paths import CONF_DIR
from layerlens.settings import instantiate_node, resolve_settings
from tests.conftest import REPO, compose_config

GROUPS = ["model", "task", "baseline", "budget", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_groups_hold_the_documented_options():
    assert options("model") == [
        "bert_base",
        "deberta_v3_base",
        "minilm_l6",
        "roberta_base",
        "smollm2_135m",
        "tiny",
        "tiny_llama",
    ]
    assert options("task") == ["cola", "mrpc", "rte", "sft", "stsb"]
    assert options("baseline") == [
        "adalora",
        "full_ft",
        "layerlens",
        "layerlens_depth",
        "layerlens_kind_depth",
        "layerlens_random",
        "layerlens_uniform",
        "lora",
        "lora_attention",
    ]
    for group in GROUPS:
        assert options(group), group


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(group, option, tracking_uri):
    cfg = compose_config("run", [f"{group}={option}"])
    assert OmegaConf.select(cfg, group) is not None
    settings = resolve_settings(cfg)  # instantiates task, model, baseline, budget, logger; checks the rest
    assert settings.task.name == cfg.task.name
    if (group, option) == ("trainer", "fsdp") and not torch.cuda.is_available():
        return  # Lightning runs FSDP on GPUs only: test_launchers checks its strategy and the refusal on CPU
    trainer = instantiate_node(cfg, "trainer", logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def targets(node) -> set[str]:
    """Every `_target_` in a config, at any depth."""
    if isinstance(node, dict):
        return {node.get("_target_")} - {None} | {t for value in node.values() for t in targets(value)}
    if isinstance(node, list):
        return {t for value in node for t in targets(value)}
    return set()


def test_the_targets_that_earlier_runs_recorded_still_name_an_object():
    # python -m layerlens.evaluate instantiates a run's recorded config again: a `_target_` it recorded must still
    # resolve after modules move (conf/ names what packages export, e.g. layerlens.baselines.LayerLensBaseline).
    recorded = set()
    for path in (REPO / "experiments" / "results").glob("*/runs.jsonl"):
        for line in path.read_text().splitlines():
            recorded |= targets(json.loads(line)["config"])
    assert {"layerlens.baselines.LayerLensBaseline", "layerlens.baselines.AdaLoraBaseline"} <= recorded
    for target in sorted(recorded):
        assert callable(get_object(target)), target


def test_defaults_are_the_offline_backbone_and_mrpc(tracking_uri):
    cfg = compose_config("run")
    assert (cfg.model.name, cfg.task.name, cfg.task.source) == ("minilm_l6", "mrpc", "embedded")
    assert cfg.logger.tracking_uri == tracking_uri


def test_default_tracking_store_is_sqlite_in_the_working_directory(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose_config("run").logger.tracking_uri == "sqlite:///mlflow.db"


def test_overrides_reach_the_objects(tracking_uri):
    cfg = compose_config("run", ["baseline=lora", "baseline.r=16", "trainer.max_epochs=1", "seed=3"])
    settings = resolve_settings(cfg)
    assert settings.baseline.r == 16 and settings.baseline.lora_config(["query"]).r == 16
    assert settings.seed == 3 and cfg.trainer.max_epochs == 1


def test_experiment_config_holds_only_overrides(tracking_uri):
    cfg = compose_config("run", ["experiment=smoke"])
    assert cfg.model.name == "tiny" and cfg.trainer.limit_train_batches == 3


def test_plan_config_is_the_run_config_with_the_layerlens_baseline(tracking_uri):
    cfg = compose_config("plan", ["budget.params_pct=0.1", "task=rte"])
    assert cfg.baseline.name == "layerlens" and cfg.budget.params_pct == 0.1 and cfg.task.name == "rte"
    assert resolve_settings(cfg).baseline.planner.gain_exponent == 0.5


def test_report_and_evaluate_configs_compose(tracking_uri):
    report = compose_config("report")
    assert report.targets.reference == "full_ft"
    targets = [Target(**check) for check in OmegaConf.to_container(report.targets.checks, resolve=True)]
    assert {"total time <= 50% of full_ft", "profiling <= 5% of full_ft training"} <= {t.name for t in targets}
    evaluate = compose_config("evaluate", ["run_id=abc", "file=x.tsv"])
    assert evaluate.tracking_uri == tracking_uri
