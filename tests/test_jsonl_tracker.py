"""logger=jsonl: one JSON line per run without an MLflow store, which the report reads as it reads a store."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from layerlens.analysis.assemble import make_report
from layerlens.errors import LayerLensError
from layerlens.pipeline import run_experiment
from layerlens.settings import resolve_settings
from layerlens.tracking import JsonlTracker
from tests.conftest import TINY, compose_config


def test_a_run_appends_one_finished_line_with_its_final_metrics_tags_and_config(tmp_path):
    path = tmp_path / "runs.jsonl"
    for seed in (0, 1):
        cfg = compose_config(
            "run",
            [
                *TINY,
                "baseline=layerlens",
                "logger=jsonl",
                f"logger.path={path}",
                f"seed={seed}",
                "baseline.profile.num_batches=4",
            ],
        )
        headline = run_experiment(cfg, tmp_path / f"s{seed}", sweep="sw")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["run_name"] for r in records] == ["layerlens-mrpc-s0", "layerlens-mrpc-s1"]
    last = records[-1]
    assert last["status"] == "FINISHED" and last["error"] is None
    assert last["metrics"]["val/acc"] == pytest.approx(headline)
    assert last["metrics"]["params/trainable"] > 0 and "time/profile_s" in last["metrics"]
    assert (last["tags"]["baseline"], last["tags"]["seed"], last["tags"]["sweep"]) == ("layerlens", "1", "sw")
    assert last["tags"]["checkpoint"].endswith(".ckpt")
    assert last["config"]["seed"] == 1 and last["config"]["logger"]["path"] == str(path)
    # The report reads the log as it reads an MLflow store: one configuration (utility_seed follows the seed).
    files = make_report(compose_config("report", [f"source={path}", f"out_dir={tmp_path / 'report'}"]))
    (row,) = pd.read_csv(files.csv).itertuples()
    assert (row.baseline, row.n_runs, row.seeds, row.model) == ("layerlens", 2, "0,1", "tiny")
    assert pd.isna(row.variant)  # the CSV's empty variant: one configuration
    assert row.acc_mean == pytest.approx(sum(r["metrics"]["test/acc"] for r in records) / 2)
    assert f"Source: JSONL log {path}" in files.markdown.read_text()


def test_a_failed_run_is_recorded_failed_with_its_error_and_the_error_goes_on(tmp_path):
    path = tmp_path / "runs.jsonl"
    tracker = resolve_settings(compose_config("run", ["logger=jsonl", f"logger.path={path}"])).tracker
    with (
        pytest.raises(LayerLensError, match="broke"),
        tracker.start_run("r", {"baseline": "lora"}, compose_config("run")) as run,
    ):
        run.log_metrics({"profile/utility_cv": 0.5})
        raise LayerLensError("broke\nsecond line")
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (record["status"], record["error"], record["metrics"]) == ("FAILED", "broke", {"profile/utility_cv": 0.5})


@pytest.mark.parametrize("path", ["", "  ", None])
def test_an_empty_path_is_refused_naming_the_field(path):
    with pytest.raises(LayerLensError, match="logger.path must be a non-empty string"):
        JsonlTracker(path)


def test_the_pipeline_runs_without_importing_mlflow():
    code = "import sys, layerlens.pipeline, layerlens.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
