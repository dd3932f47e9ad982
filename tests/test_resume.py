"""SIGINT/SIGTERM during training: a checkpoint and a KILLED MLflow run; resuming ends as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, TINY, run_module
from layerlens.errors import LayerLensError
from layerlens.pipeline import run_experiment

# Three epochs of 8 steps; the signal lands mid-epoch 0.
ARGS = [*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=8"]


def start(out: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "layerlens.run", *args, f"hydra.run.dir={out}"], cwd=REPO,
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupt(out: Path, signum: int, args: list[str] = ARGS, after_steps: int = 5) -> tuple[subprocess.Popen, str]:
    """Run `args` in `out` and send `signum` once `after_steps` training steps are logged: within epoch 0, and
    for adalora within its rank-budgeting phase (steps 2 to 12 of 24 here)."""
    proc = start(out, args)
    deadline = time.monotonic() + 600
    while logged_steps(out) < after_steps:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=600)
    return proc, err


def logged_steps(out: Path) -> int:
    try:
        return len(history(os.environ["MLFLOW_TRACKING_URI"], run_id(out), "train/loss"))
    except (FileNotFoundError, ValueError):  # run.json not (fully) written yet
        return 0


def run_id(out: Path) -> str:
    return json.loads((out / "run.json").read_text())["mlflow_run_id"]


def mlflow_run(tracking_uri: str, out: Path):
    return MlflowClient(tracking_uri).get_run(run_id(out))


def history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))


# lora: the plain case; layerlens: the resumed run rebuilds the saved plan; adalora: the rank allocator's
# importance averages and rank pattern live outside the model's weights.
@pytest.mark.parametrize("baseline", ["lora", "layerlens", "adalora"])
def test_sigterm_saves_kills_and_resumes_to_the_uninterrupted_result(tracking_uri, compose_run, tmp_path, baseline):
    args = [*ARGS, f"baseline={baseline}"]
    full = run_module("run", *args, f"hydra.run.dir={tmp_path / 'full'}", cwd=REPO)
    assert full.returncode == 0, full.stderr[-3000:]
    out = tmp_path / "cut"
    proc, err = interrupt(out, signal.SIGTERM, args)

    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: SIGTERM") and f"resume={out}" in last, last
    cut = mlflow_run(tracking_uri, out)
    assert cut.info.status == "KILLED"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert 0 < len(history(tracking_uri, cut.info.run_id, "train/loss")) < 3 * 8  # stopped mid-training

    # A resume with another config is refused, naming the field, before anything runs.
    with pytest.raises(LayerLensError, match=r"resume: the config differs .* at .*baseline"):
        run_experiment(compose_run("trainer.max_epochs=3", "trainer.limit_train_batches=8", "baseline=full_ft",
                                   f"resume={out}"), tmp_path / "unused")

    resumed = run_module("run", *args, f"resume={out}", cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done, reference = mlflow_run(tracking_uri, out), mlflow_run(tracking_uri, tmp_path / "full")
    assert done.info.run_id == cut.info.run_id and done.info.status == "FINISHED"
    for key in ("val/acc", "val/f1", "val/loss"):
        assert done.data.metrics[key] == pytest.approx(reference.data.metrics[key], abs=1e-6), key
    for key in ("train/loss", "val/loss"):  # every step and epoch, not only the best checkpoint's
        steps, expected = zip(*history(tracking_uri, reference.info.run_id, key))
        got = dict(history(tracking_uri, done.info.run_id, key))
        assert sorted(got) == list(steps), key
        assert [got[step] for step in steps] == pytest.approx(expected, abs=1e-6), key
    assert not (out / "checkpoints" / "last.ckpt").exists()

    # Finished: nothing left to resume.
    with pytest.raises(LayerLensError, match="resume: no checkpoint .*last.ckpt"):
        run_experiment(compose_run("trainer.max_epochs=3", "trainer.limit_train_batches=8", f"baseline={baseline}",
                                   f"resume={out}"), tmp_path / "unused")


def test_sigint_saves_a_checkpoint_and_marks_the_run_killed(tracking_uri, tmp_path):
    out = tmp_path / "cut"
    proc, err = interrupt(out, signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: SIGINT received; training state saved to")
    assert "Traceback" not in err
    assert mlflow_run(tracking_uri, out).info.status == "KILLED"
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_resume_of_a_missing_folder_fails_in_one_line(compose_run, tmp_path):
    with pytest.raises(LayerLensError, match=f"resume: no folder {tmp_path / 'nope'}"):
        run_experiment(compose_run(f"resume={tmp_path / 'nope'}"), tmp_path)
    with pytest.raises(LayerLensError, match=f"resume: {tmp_path} has no run.json"):
        run_experiment(compose_run(f"resume={tmp_path}"), tmp_path)
