"""Parallel sweeps into one SQLite MLflow store lose nothing: no run, no metric, no migration race, not even when the
sweep is interrupted and then finished."""

import contextlib
import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from layerlens.cli import SweepStop
from layerlens.errors import LayerLensError
from layerlens.pipeline import run_experiment
from layerlens.tracking import MlflowTracker
from layerlens.tracking.mlflow_tracker import retry_when_locked
from layerlens.training.resume import SWEEP_STOP_FILE, request_sweep_stop, sweep_stop_requested, write_run_record
from tests.conftest import TINY, run_module

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


# A joblib sweep of two jobs side by side: a short run and a long one.
SHORT, LONG = 2, 40
SWEEP = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, f"trainer.limit_train_batches={SHORT},{LONG}"]


def sweep_runs(tracking_uri: str, sweep_dir: Path) -> dict[Path, object]:
    """The MLflow run of each job folder of the sweep that has recorded one (run.json), by folder."""
    client, runs = MlflowClient(tracking_uri), {}
    for record in sweep_dir.glob("*/run.json"):
        with contextlib.suppress(ValueError):  # being written
            runs[record.parent] = client.get_run(json.loads(record.read_text())["mlflow_run_id"])
    return runs


def is_short(run) -> bool:
    return run.data.params["trainer.limit_train_batches"] == str(SHORT)


def jobs(sweeps: Path) -> list[tuple[bool, bool, bool]]:
    """Each job of the sweep that has started a run, from its folder alone: (short, finished, in its second epoch)."""
    found = []
    for record_path in sweeps.glob("*/*/run.json"):
        with contextlib.suppress(ValueError):  # being written
            record = json.loads(record_path.read_text())
            finished = "finished" in record
            second_epoch = not finished and any(record_path.parent.glob("checkpoints/best-*.ckpt"))
            found.append((record["config"]["trainer"]["limit_train_batches"] == SHORT, finished, second_epoch))
    return found


def test_an_interrupted_joblib_sweep_stops_every_run_and_resume_sweep_finishes_only_what_did_not(tmp_path, call_module):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # does not exist yet: the jobs race to create it
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    with (tmp_path / "sweep.log").open("w") as log:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "layerlens.run", "-m", *SWEEP],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: killed whole if the test fails
        )
    try:
        # Ctrl+C once a short run has finished and a long one is training its second epoch (its first's checkpoint).
        deadline = time.monotonic() + 600
        while not (
            any(short and finished for short, finished, _ in jobs(tmp_path / "multirun"))
            and any(not short and second_epoch for short, _, second_epoch in jobs(tmp_path / "multirun"))
        ):
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sweep.send_signal(signal.SIGINT)
        sweep.wait(timeout=600)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    output = (tmp_path / "sweep.log").read_text()
    assert sweep.returncode == 128 + signal.SIGINT, output[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    last = output.strip().splitlines()[-1]
    assert last.startswith("interrupted: SIGINT received") and f"resume_sweep=multirun/{sweep_dir.name}" in last, last

    # Every run that started ended KILLED or FINISHED, never RUNNING; a long one stopped in training, resumable.
    before = sweep_runs(uri, sweep_dir)
    assert {r.info.status for r in before.values()} <= {"KILLED", "FINISHED"}
    client, all_runs = finished_runs(uri)
    assert len(all_runs) == len(before)
    killed = {folder: r for folder, r in before.items() if r.info.status == "KILLED"}
    finished = {folder: r for folder, r in before.items() if r.info.status == "FINISHED"}
    assert any(is_short(r) for r in finished.values())
    resumable = {folder for folder in killed if (folder / "checkpoints" / "last.ckpt").is_file()}
    assert resumable, output[-3000:]

    # The printed command finishes the sweep: what finished is not run again, what was cut resumes, the rest runs.
    command = shlex.split(last.split("finish the sweep with: ", 1)[1])
    assert command[:4] == ["python", "-m", "layerlens.run", "-m"]
    resumed = run_module("run", *command[3:], cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = sweep_runs(uri, sweep_dir)
    assert len(after) == 2 and {r.info.status for r in after.values()} == {"FINISHED"}
    for folder, run in finished.items():  # the same run, untouched
        assert after[folder].info.run_id == run.info.run_id and after[folder].info.end_time == run.info.end_time
    for folder, run in killed.items():  # cut in training: the same run, finished; cut before: a new one
        assert (after[folder].info.run_id == run.info.run_id) == (folder in resumable), folder.name
    client, all_runs = finished_runs(uri)
    assert {r.info.status for r in all_runs} <= {"KILLED", "FINISHED"}
    assert {r.data.tags["sweep"] for r in all_runs} == {sweep_dir.name}

    # Every run has every metric, and each epoch's, that the short run has, which ran through uninterrupted.
    (uninterrupted,) = (r for r in finished.values() if is_short(r))
    epochs = len(client.get_metric_history(uninterrupted.info.run_id, "val/acc"))
    for run in after.values():
        assert set(run.data.metrics) == set(uninterrupted.data.metrics), run.info.run_name
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == epochs, run.info.run_name

    # The report counts each configuration once: its finished run.
    report = call_module("report", f"sweep={sweep_dir.name}", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert report.returncode == 0, report.stderr[-3000:]
    table = pd.read_csv(tmp_path / "reports" / f"comparison-{sweep_dir.name}.csv")
    assert list(table["n_runs"]) == [1, 1]


def test_a_signal_to_the_sweeps_process_or_one_of_its_runs_stops_the_sweep_and_a_second_stops_it_at_once(
    tmp_path, capsys
):
    sweep_dir = tmp_path / "multirun" / "s1"
    config = OmegaConf.create(
        {
            "hydra": {
                "sweep": {"dir": str(sweep_dir)},
                "overrides": {"hydra": ["hydra.mode=MULTIRUN", "hydra/launcher=joblib"], "task": ["seed=0,1"]},
            }
        }
    )
    before = signal.getsignal(signal.SIGTERM)
    stop = SweepStop()
    stop.on_multirun_start(config)
    stop_file = sweep_dir / SWEEP_STOP_FILE
    try:
        assert sweep_stop_requested(stop_file) is None
        os.kill(os.getpid(), signal.SIGTERM)  # handled here, between two bytecodes: the sweep goes on
        assert sweep_stop_requested(stop_file) == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        with pytest.raises(SystemExit) as ended:
            stop.on_multirun_end(config)
    assert ended.value.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) == before
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted: SIGTERM received; the sweep's unfinished runs stopped; finish the sweep with: "
        f"python -m layerlens.run -m hydra/launcher=joblib seed=0,1 resume_sweep={sweep_dir}"
    )
    stop.on_multirun_start(config)  # the finishing sweep starts afresh
    assert sweep_stop_requested(stop_file) is None
    request_sweep_stop(stop_file, signal.SIGINT)  # as a run that received the signal itself asks
    with pytest.raises(SystemExit) as ended:
        stop.on_multirun_end(config)
    assert ended.value.code == 128 + signal.SIGINT


def test_resume_sweep_refuses_in_one_line_what_it_cannot_finish(compose_run, tmp_path):
    with pytest.raises(LayerLensError, match="resume_sweep: finishes a sweep: run it with -m"):
        run_experiment(compose_run(f"resume_sweep={tmp_path}"), tmp_path / "run")
    with pytest.raises(LayerLensError, match=f"resume_sweep: {tmp_path} is not a sweep's folder"):
        run_experiment(compose_run(f"resume_sweep={tmp_path}"), tmp_path / "run", sweep="s1")
    (tmp_path / "multirun.yaml").write_text("{}")
    write_run_record(tmp_path / "0-lora-mrpc-s0", "x", compose_run("seed=1"))
    with pytest.raises(
        LayerLensError, match=r"resume_sweep: the config differs from the sweep's .* at seed: seed=0 here"
    ):
        run_experiment(compose_run(f"resume_sweep={tmp_path}"), tmp_path / "0-lora-mrpc-s0", sweep="s1")
