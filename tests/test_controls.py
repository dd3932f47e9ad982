"""Control plans: the same profiling, planner, allocator and build as LayerLens, valued without the profile."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from layerlens.errors import LayerLensError
from layerlens.pipeline import plan_experiment, run_experiment
from layerlens.planning.utilities import planning_utilities
from layerlens.settings import resolve_settings
from tests.conftest import compose_config

PROFILED = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 6.0])
LAYERS = [0, 0, 1, 1, 2, 2]
KINDS = ["query", "ffn_block", "query", "ffn_block", "query", "ffn_block"]
CONTROLS = ["layerlens_uniform", "layerlens_depth", "layerlens_random", "layerlens_kind_depth"]
# The tiny model's profile is short; every control must still plan within the same budget.
SHORT = ["baseline.profile.num_batches=4", "logger=none"]


def utilities(name, seed=0, prior=None):
    return planning_utilities(name, PROFILED, LAYERS, KINDS, seed, prior or {"query": 2.0, "ffn_block": 0.5})


def test_each_utility_is_what_its_name_says():
    assert utilities("profiled").tolist() == PROFILED.tolist()
    assert utilities("uniform").tolist() == [1.0] * 6
    assert utilities("depth").tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert utilities("kind_depth").tolist() == [2.0, 0.5, 4.0, 1.0, 6.0, 1.5]
    shuffled = utilities("random", seed=3)
    assert sorted(shuffled) == sorted(PROFILED) and shuffled.tolist() != PROFILED.tolist()
    assert utilities("random", seed=3).tolist() == shuffled.tolist()
    assert utilities("random", seed=4).tolist() != shuffled.tolist()


def test_a_prior_without_a_kind_and_an_unknown_utility_are_refused_by_name():
    with pytest.raises(LayerLensError, match=r"baseline.planner.kind_prior has no constant for site kind 'ffn_block'"):
        utilities("kind_depth", prior={"query": 1.0})
    with pytest.raises(LayerLensError, match=r"baseline.planner.utility must be one of profiled, uniform"):
        utilities("oracle")
    with pytest.raises(LayerLensError, match=r"baseline.planner.kind_prior has no constant for site kind 'key'"):
        resolve_settings(
            compose_config("run", ["model=tiny", "baseline=layerlens_kind_depth", "~baseline.planner.kind_prior.key"])
        )


def test_controls_plan_differently_from_the_same_profile_within_the_same_budget(tracking_uri, tmp_path):
    plans = {}
    for baseline in ["layerlens", *CONTROLS]:
        cfg = compose_config("run", ["model=tiny", "trainer=debug", f"baseline={baseline}", *SHORT])
        plan, record = plan_experiment(cfg, tmp_path / baseline)
        plans[baseline] = (plan, record)
    untimed = lambda record: {k: v for k, v in record.items() if k.startswith("profile/")}
    reference, checks = plans["layerlens"]
    for baseline in CONTROLS:
        plan, control_checks = plans[baseline]
        assert untimed(control_checks) == untimed(checks), baseline  # the same profile
        assert plan.budgets == reference.budgets and plan.within_budgets(), baseline
        assert plan.utilisation()["params"] > 0.9, baseline
        assert [c.size for c in plan.choices] != [c.size for c in reference.choices], baseline
    uniform = plans["layerlens_uniform"][0]
    assert len({c.utility for c in uniform.choices}) == 1
    depth = plans["layerlens_depth"][0]
    assert all(c.utility == c.layer + 1 for c in depth.choices)
    assert sorted(c.utility for c in plans["layerlens_random"][0].choices) == sorted(
        c.utility for c in reference.choices
    )


def test_a_plans_record_carries_its_utilities_validity_against_measured_gains(tracking_uri, tmp_path):
    """Gains measured as the depth prior orders them (higher layers gain more): the depth control's utilities
    predict them, rank for rank; the uniform control's (all tied) cannot, and the profile's lies in between."""
    cfg = compose_config("run", ["model=tiny", "trainer=debug", "baseline=layerlens", *SHORT])
    reference, _ = plan_experiment(cfg, tmp_path / "reference")
    assert "plan/utility_validity" not in _  # only where gains are given
    gains = tmp_path / "gains.jsonl"
    lines = [{"site": None, "selection_loss": 1.0}]
    lines += [{"site": c.site, "selection_loss": 1.0 - 0.01 * (c.layer + 1)} for c in reference.choices[::2]]
    gains.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = {}
    for baseline in ["layerlens", "layerlens_depth", "layerlens_uniform"]:
        cfg = compose_config(
            "run", ["model=tiny", "trainer=debug", f"baseline={baseline}", *SHORT, f"baseline.validity_gains={gains}"]
        )
        records[baseline] = plan_experiment(cfg, tmp_path / baseline)[1]
    measured = len(reference.choices[::2])
    assert all(r["plan/utility_validity_sites"] == measured for r in records.values() if r)
    assert records["layerlens_depth"]["plan/utility_validity"] == pytest.approx(1.0)
    assert np.isnan(records["layerlens_uniform"]["plan/utility_validity"])
    assert -1.0 <= records["layerlens"]["plan/utility_validity"] < 1.0


def test_a_missing_gains_file_is_refused_before_profiling(tmp_path):
    cfg = compose_config("run", ["model=tiny", "baseline=layerlens", f"baseline.validity_gains={tmp_path}/none.jsonl"])
    with pytest.raises(LayerLensError, match=r"^baseline.validity_gains: no file .*none.jsonl$"):
        resolve_settings(cfg)


@pytest.mark.parametrize("baseline", [*CONTROLS, "lora_attention"])
def test_each_control_trains_and_is_reported_under_its_own_name(baseline, tracking_uri, tmp_path):
    cfg = compose_config(
        "run",
        [
            "model=tiny",
            "trainer=debug",
            f"baseline={baseline}",
            *(["baseline.profile.num_batches=4"] if baseline != "lora_attention" else []),
        ],
    )
    headline = run_experiment(cfg, tmp_path)
    client = MlflowClient(tracking_uri)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.info.run_name == f"{baseline}-mrpc-s0" and run.data.tags["baseline"] == baseline
    assert run.data.metrics["val/acc"] == headline and 0 <= run.data.metrics["test/acc"] <= 1


def test_lora_on_the_four_attention_projections_matches_lora_in_parameters(tmp_path):
    from layerlens.pipeline import build_classifier, build_datamodule, count_parameters

    counts, adapted = {}, {}
    for baseline in ("lora", "lora_attention"):
        cfg = compose_config("run", ["model=tiny", "trainer=debug", f"baseline={baseline}", "logger=none"])
        s = resolve_settings(cfg)
        model = build_classifier(s, cfg, build_datamodule(s, s.backbone.tokenizer()), tmp_path)[0].model
        counts[baseline] = count_parameters(model, trainable_only=True)
        adapted[baseline] = {
            n.split(".layer.")[1].split(".lora_A")[0].split(".", 1)[1]
            for n, _ in model.named_parameters()
            if "lora_A" in n
        }
    assert counts["lora"] == counts["lora_attention"]
    assert adapted["lora_attention"] == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    }
