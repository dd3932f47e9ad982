"""Runs recorded in MLflow, the comparison report read back from the store, and evaluate."""

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from layerlens.analysis.assemble import make_report
from layerlens.analysis.comparison import Target, summarise
from layerlens.analysis.runs import run_config
from layerlens.errors import LayerLensError
from layerlens.paths import EMBEDDED_GLUE_DIR
from layerlens.pipeline import run_experiment
from layerlens.training.checkpoint_eval import evaluate_run
from tests.conftest import compose_config, copy_store

METRICS = {
    "val/acc",
    "val/f1",
    "val/mcc",
    "test/acc",
    "test/f1",
    "test/mcc",
    "params/trainable",
    "params/trainable_pct",
    "time/train_s",
    "time/eval_s",
    "mem/peak_rss_mb",
    "throughput/train_samples_per_s",
}


def runs_of(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments, order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_template):
    """Five tiny runs: full_ft and lora with seeds 0 and 1 in sweep s1, and lora seed 2 outside any sweep."""
    root = tmp_path_factory.mktemp("store")
    uri = copy_store(store_template, root / "mlflow.db")
    overrides = ["model=tiny", "trainer=debug", f"logger.tracking_uri={uri}"]
    values = {}
    for baseline, seed, sweep in [
        ("full_ft", 0, "s1"),
        ("full_ft", 1, "s1"),
        ("lora", 0, "s1"),
        ("lora", 1, "s1"),
        ("lora", 2, None),
    ]:
        cfg = compose_config("run", [*overrides, f"baseline={baseline}", f"seed={seed}"])
        values[(baseline, seed)] = run_experiment(cfg, root / f"{baseline}-{seed}", sweep=sweep)
    return uri, values, root


def test_each_run_records_its_metrics_tags_config_and_checkpoint(store):
    uri, values, _ = store
    client, runs = runs_of(uri)
    assert [r.info.status for r in runs] == ["FINISHED"] * 5
    run = runs[2]
    assert run.info.run_name == "lora-mrpc-s0"
    assert set(run.data.metrics) >= METRICS
    tags = run.data.tags
    assert (tags["baseline"], tags["task"], tags["model"], tags["seed"], tags["sweep"]) == (
        "lora",
        "mrpc",
        "tiny",
        "0",
        "s1",
    )
    assert tags["mlflow.source.git.commit"] and tags["native_build"].startswith("layerlens._rank_alloc")
    assert run.data.params["baseline.r"] == "8" and run.data.params["trainer.max_epochs"] == "2"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert Path(tags["checkpoint"]).is_file()
    assert client.get_experiment(run.info.experiment_id).name == "layerlens-mrpc"
    assert values[("lora", 0)] == run.data.metrics["val/acc"]
    assert 0 < run.data.metrics["params/trainable_pct"] < 5
    assert runs[0].data.metrics["params/trainable_pct"] == pytest.approx(100.0)


def test_each_run_records_where_its_wall_time_went(store):
    """The shares of issue 21.4: the steps and the checkpoints inside training time, which with validation, the
    data's loading and tokenising and the test's evaluation fall inside the run's wall time."""
    _, runs = runs_of(store[0])
    for run in runs:
        m = run.data.metrics
        assert 0 < m["time/steps_s"] < m["time/train_s"]
        assert 0 < m["time/checkpoint_s"] < m["time/train_s"] - m["time/steps_s"]
        assert min(m["time/data_s"], m["time/validate_s"], m["time/eval_s"]) > 0
        # What training saw, whichever epoch's checkpoint was then restored to be scored: 2 epochs of 3 batches of 8.
        assert m["throughput/train_samples_per_s"] * m["time/train_s"] == pytest.approx(48)
        inside = m["time/data_s"] + m["time/train_s"] + m["time/validate_s"] + m["time/eval_s"]
        assert inside < m["time/wall_s"] < inside + 60  # + loading the model (and the plan)


def test_final_selection_metrics_are_the_best_checkpoints_and_the_test_split_is_read_once(store):
    uri, _, _ = store
    client, runs = runs_of(uri)
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val/acc")
        per_epoch, final = history[:-1], history[-1]
        assert len(per_epoch) == 2  # trainer=debug: 2 epochs
        assert final.step > max(m.step for m in per_epoch)
        assert final.value == pytest.approx(max(m.value for m in per_epoch))
        assert run.data.metrics["val/acc"] == final.value
        assert len(client.get_metric_history(run.info.run_id, "test/acc")) == 1  # the test split is read once


def test_report_for_a_sweep_names_runs_seeds_ratios_and_targets(store, tmp_path):
    uri, _, _ = store
    cfg = compose_config("report", [f"tracking_uri={uri}", "sweep=s1", f"out_dir={tmp_path}"])
    markdown, csv, plots, paired = make_report(cfg)
    assert paired == ()  # no compare
    table = pd.read_csv(csv)
    assert list(table["baseline"]) == ["full_ft", "lora"] and list(table["n_runs"]) == [2, 2]
    assert list(table["seeds"]) == ["0,1", "0,1"]
    assert list(table["headline"]) == ["val/acc", "val/acc"]  # MRPC's: the ratios follow accuracy, as before
    _, runs = runs_of(uri)
    swept_lora = [
        r.data.metrics["test/acc"]
        for r in runs
        if r.data.tags.get("sweep") == "s1" and r.data.tags["baseline"] == "lora"
    ]
    assert table.loc[1, "acc_mean"] == pytest.approx(sum(swept_lora) / 2)  # the test split's, not the selection's
    assert table.loc[0, "headline_ratio"] == pytest.approx(1.0)
    lora = table.iloc[1]
    assert lora["headline_ratio"] == pytest.approx(lora["acc_mean"] / table.loc[0, "acc_mean"])
    assert lora["train_s_ratio"] == pytest.approx(lora["train_s_mean"] / table.loc[0, "train_s_mean"])
    assert lora["trainable <= 5%"] == "met" and table.loc[0, "trainable <= 5%"] == "not met"
    text = markdown.read_text()
    assert "sweep s1" in text and "lora-mrpc-s0 lora-mrpc-s1" in text and "test split" in text
    assert [p.name for p in plots] == [
        "comparison-s1-pareto.png",
        "comparison-s1-time.png",
        "comparison-s1-time-pareto.png",
    ]


def test_report_without_a_sweep_takes_every_finished_run(store, tmp_path):
    uri, _, _ = store
    markdown, csv, *_ = make_report(compose_config("report", [f"tracking_uri={uri}", f"out_dir={tmp_path}"]))
    table = pd.read_csv(csv)
    assert list(table["n_runs"]) == [2, 3] and markdown.name == "comparison-all.md"


def test_report_restricted_to_one_task(store, tmp_path):
    uri, _, _ = store
    cfg = compose_config("report", [f"tracking_uri={uri}", "sweep=s1", "task_name=mrpc", f"out_dir={tmp_path}"])
    markdown, csv, *_ = make_report(cfg)
    assert markdown.name == "comparison-s1-mrpc.md" and len(pd.read_csv(csv)) == 2
    with pytest.raises(LayerLensError, match="no finished LayerLens runs match"):
        make_report(compose_config("report", [f"tracking_uri={uri}", "task_name=rte", f"out_dir={tmp_path}"]))


def test_report_latest_sweep_and_unknown_sweep(store, tmp_path):
    uri, _, _ = store
    _, csv, *_ = make_report(compose_config("report", [f"tracking_uri={uri}", "sweep=latest", f"out_dir={tmp_path}"]))
    assert csv.name == "comparison-s1.csv"
    _, csv, *_ = make_report(
        compose_config("report", [f"tracking_uri={uri}", "sweep=[s1,nope]", f"out_dir={tmp_path}"])
    )
    assert csv.name == "comparison-s1.csv" and list(pd.read_csv(csv)["n_runs"]) == [2, 2]
    with pytest.raises(LayerLensError, match="no finished LayerLens runs match"):
        make_report(compose_config("report", [f"tracking_uri={uri}", "sweep=nope", f"out_dir={tmp_path}"]))


def test_evaluate_scores_a_file_and_logs_it_under_its_name(store):
    uri, _, _ = store
    client, runs = runs_of(uri)
    run_id = runs[2].info.run_id
    dev = EMBEDDED_GLUE_DIR / "MRPC" / "dev.tsv"
    metrics = evaluate_run(uri, run_id, dev)
    assert set(metrics) == {"eval/MRPC_dev/acc", "eval/MRPC_dev/f1", "eval/MRPC_dev/mcc", "eval/MRPC_dev/n_rows"}
    assert metrics["eval/MRPC_dev/n_rows"] == 408  # the whole file, not the run's limit_val_batches
    logged = client.get_run(run_id).data
    assert logged.metrics["eval/MRPC_dev/acc"] == metrics["eval/MRPC_dev/acc"]
    # MRPC's dev file is the run's test split: scoring it again gives what the run logged.
    for name in ("acc", "f1", "mcc"):
        assert metrics[f"eval/MRPC_dev/{name}"] == pytest.approx(logged.metrics[f"test/{name}"], abs=1e-6)
    assert logged.tags["eval/MRPC_dev/file"] == str(dev)
    with pytest.raises(LayerLensError, match="run_id: no run 'missing'"):
        evaluate_run(uri, "missing", dev)


def summary_of(rows, targets):
    return summarise(pd.DataFrame(rows), targets).set_index("baseline")


def test_summary_statistics_and_targets_are_exact():
    rows = [
        {
            "run_id": f"r{i}",
            "run_name": f"{b}-{s}",
            "task": "mrpc",
            "model": "m",
            "baseline": b,
            "seed": str(s),
            "test/acc": acc,
            "test/f1": 0.9,
            "params/trainable_pct": pct,
            "time/train_s": t,
        }
        for i, (b, s, acc, pct, t) in enumerate(
            [
                ("full_ft", 0, 0.80, 100.0, 100.0),
                ("full_ft", 1, 0.84, 100.0, 120.0),
                ("lora", 0, 0.78, 1.0, 40.0),
                ("lora", 1, 0.76, 1.0, 80.0),
            ]
        )
    ]
    targets = [Target("acc", "test/acc", "ratio", ">=", 0.95), Target("time", "time/train_s", "ratio", "<=", 0.5)]
    table = summary_of(rows, targets)
    assert table.loc["full_ft", "acc_mean"] == pytest.approx(0.82)
    assert table.loc["lora", "acc_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert table.loc["lora", "acc_ratio"] == pytest.approx(0.77 / 0.82)
    assert table.loc["lora", "train_s_ratio"] == pytest.approx(60 / 110)
    assert (table.loc["lora", "acc"], table.loc["lora", "time"]) == ("not met", "not met")
    assert table.loc["full_ft", "acc"] == "met"
    no_reference = summary_of([r for r in rows if r["baseline"] == "lora"], targets)
    assert no_reference.loc["lora", "acc"] == "n/a"


def test_headline_follows_each_tasks_own_metric_and_its_ratio_needs_the_same_headline():
    def run(i, task, baseline, headline, **metrics):
        return {
            "run_id": f"r{i}",
            "run_name": f"{baseline}-{task}",
            "task": task,
            "model": "m",
            "baseline": baseline,
            "seed": "0",
            "headline": headline,
            **metrics,
        }

    rows = [
        run(0, "mrpc", "full_ft", "val/acc", **{"test/acc": 0.80, "test/mcc": 0.50}),
        run(1, "mrpc", "lora", "val/acc", **{"test/acc": 0.76, "test/mcc": 0.30}),
        run(2, "stsb", "full_ft", "val/pearson", **{"test/pearson": 0.80, "test/spearman": 0.70}),
        run(3, "stsb", "lora", "val/pearson", **{"test/pearson": 0.60, "test/spearman": 0.69}),
        run(4, "cola", "full_ft", "val/acc", **{"test/acc": 0.70, "test/mcc": 0.40}),
        run(5, "cola", "lora", "val/mcc", **{"test/acc": 0.69, "test/mcc": 0.39}),
    ]
    targets = [
        Target("headline 95%", "headline", "ratio", ">=", 0.95),
        Target("mcc", "test/mcc", "absolute", ">=", 0.35),
    ]
    table = summarise(pd.DataFrame(rows), targets).set_index(["task", "baseline"])
    assert table.loc[("mrpc", "lora"), "headline_mean"] == pytest.approx(0.76)
    assert table.loc[("mrpc", "lora"), "headline_ratio"] == pytest.approx(0.76 / 0.80)
    assert table.loc[("stsb", "lora"), "headline_ratio"] == pytest.approx(0.60 / 0.80)
    assert (
        table.loc[("mrpc", "lora"), "headline 95%"] == "met"
        and table.loc[("stsb", "lora"), "headline 95%"] == "not met"
    )
    assert table.loc[("cola", "lora"), "mcc"] == "met" and table.loc[("mrpc", "lora"), "mcc"] == "not met"
    # A reference scored by another headline metric gives no headline ratio (and no verdict).
    assert (
        pd.isna(table.loc[("cola", "lora"), "headline_ratio"]) and table.loc[("cola", "lora"), "headline 95%"] == "n/a"
    )
    no_headline_logged = summarise(pd.DataFrame(rows[:2]).drop(columns="headline"), [])
    assert list(no_headline_logged["headline"]) == ["val/acc", "val/acc"]


def test_a_ratio_target_can_divide_by_another_metric_of_the_reference():
    rows = [
        {
            "run_id": "r0",
            "run_name": "full_ft-0",
            "task": "mrpc",
            "model": "m",
            "baseline": "full_ft",
            "seed": "0",
            "test/acc": 0.8,
            "time/train_s": 200.0,
            "time/total_s": 200.0,
        },
        {
            "run_id": "r1",
            "run_name": "layerlens-0",
            "task": "mrpc",
            "model": "m",
            "baseline": "layerlens",
            "seed": "0",
            "test/acc": 0.8,
            "time/train_s": 80.0,
            "time/profile_s": 12.0,
            "time/total_s": 93.0,
        },
    ]
    targets = [
        Target("profiling", "time/profile_s", "ratio", "<=", 0.05, of="time/train_s"),
        Target("total", "time/total_s", "ratio", "<=", 0.5),
    ]
    table = summary_of(rows, targets)
    assert table.loc["layerlens", "profile_s_per_ref_train_s"] == pytest.approx(12 / 200)
    assert table.loc["layerlens", "total_s_ratio"] == pytest.approx(93 / 200)
    assert (table.loc["layerlens", "profiling"], table.loc["layerlens", "total"]) == ("not met", "met")
    assert table.loc["full_ft", "profiling"] == "n/a"


def test_target_config_errors_name_the_field():
    with pytest.raises(LayerLensError, match="metric must be one of"):
        Target("x", "test/nope", "ratio", ">=", 1)
    with pytest.raises(LayerLensError, match="op must be one of"):
        Target("x", "test/acc", "ratio", "=>", 1)
    with pytest.raises(LayerLensError, match="target 'x': of must be one of .* with compare: ratio"):
        Target("x", "time/profile_s", "absolute", "<=", 1, of="time/train_s")
    assert Target("x", "headline", "ratio", ">=", 1).column() == "headline_ratio"


def test_runs_of_different_configs_are_separate_rows_named_by_what_differs():
    def run(i, baseline, seed, lr, acc):
        config = {"baseline.lr": lr, "trainer.max_epochs": "4"}
        return {
            "run_id": f"r{i}",
            "run_name": f"{baseline}-{seed}",
            "task": "mrpc",
            "model": "m",
            "baseline": baseline,
            "seed": str(seed),
            "config": config,
            "test/acc": acc,
        }

    rows = [
        run(0, "full_ft", 0, "5e-05", 0.80),
        run(1, "lora", 0, "0.002", 0.70),
        run(2, "lora", 1, "0.002", 0.72),
        run(3, "lora", 0, "0.003", 0.78),
    ]
    targets = [Target("acc", "test/acc", "ratio", ">=", 0.95)]
    table = summarise(pd.DataFrame(rows), targets).set_index(["baseline", "variant"])
    assert table.loc[("lora", "baseline.lr=0.002"), "n_runs"] == 2
    assert table.loc[("lora", "baseline.lr=0.002"), "acc_mean"] == pytest.approx(0.71)
    assert table.loc[("lora", "baseline.lr=0.003"), "acc_ratio"] == pytest.approx(0.78 / 0.80)
    assert table.loc[("full_ft", ""), "acc"] == "met"
    two_references = summarise(pd.DataFrame([*rows, run(4, "full_ft", 0, "1e-05", 0.75)]), targets)
    assert two_references["acc_ratio"].isna().all()
    assert set(two_references["acc"]) == {"n/a"}


def test_a_variant_ignores_what_does_not_change_the_computation():
    params = {
        "seed": "3",
        "logger.path": "/tmp/a/runs.jsonl",
        "baseline.planner.calibration_dir": "/tmp/a/calibration",
        "trainer.enable_progress_bar": "False",
        "baseline.lr": "0.001",
        "baseline.planner.time_model": "measured",
    }
    assert run_config(params) == {"baseline.lr": "0.001", "baseline.planner.time_model": "measured"}


def test_seed_column_orders_numbers_numerically_and_other_tags_after():
    rows = [
        {
            "run_id": f"r{i}",
            "run_name": f"lora-{s}",
            "task": "mrpc",
            "model": "m",
            "baseline": "lora",
            "seed": s,
            "test/acc": 0.8,
        }
        for i, s in enumerate(["10", "2", "²", "x"])
    ]
    assert summarise(pd.DataFrame(rows), []).loc[0, "seeds"] == "2,10,x,²"


def test_plan_checks_list_each_planned_run_and_skip_the_others():
    from layerlens.analysis.comparison import plan_checks

    runs = pd.DataFrame(
        [
            {"task": "mrpc", "model": "m", "run_name": "lora-mrpc-s0", "sweep": "a", "start_time": 1, "test/acc": 0.8},
            {
                "task": "mrpc",
                "model": "m",
                "run_name": "layerlens-mrpc-s1",
                "sweep": "a",
                "start_time": 2,
                "profile/grad_corr": 0.97,
                "profile/fisher_corr": 0.98,
                "plan/utilisation/params": 0.99,
                "plan/consistency/lora": 1.0,
            },
        ]
    )
    checks = plan_checks(runs)
    assert list(checks["run_name"]) == ["layerlens-mrpc-s1"]
    assert checks.loc[0, "grad corr"] == 0.97 and checks.loc[0, "params budget used"] == 0.99
    assert plan_checks(runs.iloc[:1]).empty
