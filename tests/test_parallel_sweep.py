"""Parallel sweeps into one SQLite MLflow store lose nothing: no run, no metric, no migration race."""

import multiprocessing

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from layerlens.pipeline import run_experiment
from layerlens.tracking import MlflowTracker
from layerlens.tracking.mlflow_tracker import retry_when_locked
from tests.conftest import TINY, compose_config, copy_store, run_module

N_PROCESSES, N_STEPS = 3, 20


def finished_runs(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, runs


def _log_one_run(tracking_uri: str, index: int, barrier) -> None:
    tracker = MlflowTracker(tracking_uri, "race")
    barrier.wait()  # every process opens the fresh store at the same moment
    with tracker.start_run(f"run-{index}", {"index": index}, OmegaConf.create({"index": index})) as run:
        for step in range(N_STEPS):
            run.log_metrics({"val/acc": step / N_STEPS, "train/loss": 1.0 / (step + 1)}, step=step)


def test_processes_opening_one_fresh_store_at_once_all_record_their_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = multiprocessing.get_context("fork")  # spawn would re-import torch and lightning in each child: minutes
    barrier = context.Barrier(N_PROCESSES)
    processes = [context.Process(target=_log_one_run, args=(uri, i, barrier)) for i in range(N_PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * N_PROCESSES
    client, runs = finished_runs(uri)
    assert sorted(r.info.run_name for r in runs) == [f"run-{i}" for i in range(N_PROCESSES)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == N_STEPS


def test_calls_are_retried_while_the_database_is_locked_and_only_then():
    calls = []

    @retry_when_locked
    def write(fail_times: int, error: Exception):
        calls.append(1)
        if len(calls) <= fail_times:
            raise error
        return "written"

    locked = MlflowException("(sqlite3.OperationalError) database is locked")
    assert write(3, locked) == "written" and len(calls) == 4
    calls.clear()
    with pytest.raises(MlflowException, match="no such table"):
        write(3, MlflowException("(sqlite3.OperationalError) no such table: runs"))
    assert len(calls) == 1


def test_joblib_sweep_records_every_run_with_all_its_metrics(tmp_path, store_template):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # does not exist yet: the jobs race to create it
    result = run_module(
        "run",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY,
        "baseline=full_ft,lora",
        "seed=0,1",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    assert len(list(sweep_dir.iterdir())) >= 4

    reference_uri = copy_store(store_template, tmp_path / "sequential.db")
    run_experiment(compose_config("run", [*TINY, f"logger.tracking_uri={reference_uri}"]), tmp_path / "sequential")
    reference_client, (reference,) = finished_runs(reference_uri)
    reference_steps = len(reference_client.get_metric_history(reference.info.run_id, "val/acc"))

    client, runs = finished_runs(uri)
    assert sorted(r.info.run_name for r in runs) == [
        "full_ft-mrpc-s0",
        "full_ft-mrpc-s1",
        "lora-mrpc-s0",
        "lora-mrpc-s1",
    ]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["sweep"] for r in runs} == {sweep_dir.name}
    for run in runs:
        assert set(run.data.metrics) == set(reference.data.metrics), run.info.run_name
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == reference_steps, run.info.run_name
