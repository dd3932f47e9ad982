"""A Hydra multirun from the command line: its runs share a sweep tag that the report understands."""

import pandas as pd
from mlflow.tracking import MlflowClient

from tests.conftest import copy_store


def test_sweep_runs_are_grouped_and_reported(tmp_path, call_module, store_template):
    env = {"MLFLOW_TRACKING_URI": copy_store(store_template, tmp_path / "mlflow.db")}
    result = call_module("run", "-m", "model=tiny", "trainer=debug", "baseline=full_ft,lora", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.run_name for r in runs) == ["full_ft-mrpc-s0", "lora-mrpc-s0"]
    assert {r.data.tags["sweep"] for r in runs} == {sweep_dir.name}
    assert {r.info.status for r in runs} == {"FINISHED"}

    report = call_module("report", "sweep=latest", cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"sweep {sweep_dir.name}" in report.stdout
    table = pd.read_csv(tmp_path / "reports" / f"comparison-{sweep_dir.name}.csv")
    assert list(table["baseline"]) == ["full_ft", "lora"] and list(table["n_runs"]) == [1, 1]
