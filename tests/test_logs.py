"""Output that is not a terminal (a log file, a cluster job) gets a line per epoch, not a progress bar's redraws."""

import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout

import pytest
from mlflow.tracking import MlflowClient

from layerlens.training.callbacks import progress_bar_shown
from tests.conftest import TINY, run_main

EPOCH_LINE = re.compile(r"epoch (\d+)/3 \(step (\d+)\): (.+); (\d+):(\d\d):(\d\d) elapsed$", re.M)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_shown_where_wanted_and_stdout_is_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout", Terminal())
    assert progress_bar_shown(True) and not progress_bar_shown(False)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert not progress_bar_shown(True)


def test_a_run_logged_to_a_file_writes_one_line_per_epoch_with_its_metrics_and_time(tmp_path, tracking_uri):
    log_file, out = tmp_path / "job.log", tmp_path / "run"
    with log_file.open("w") as stream, redirect_stdout(stream), redirect_stderr(stream):
        code = run_main(
            "layerlens.run", *TINY, "trainer.max_epochs=3", "trainer.enable_progress_bar=true", f"hydra.run.dir={out}"
        )
    text = log_file.read_text()
    assert code == 0, text[-3000:]
    assert "\r" not in text and "it/s]" not in text  # no progress bar redrawn into the file

    lines = EPOCH_LINE.findall(text)
    assert [int(epoch) for epoch, *_ in lines] == [1, 2, 3], text[-3000:]
    seconds = [3600 * int(h) + 60 * int(m) + int(s) for *_, h, m, s in lines]
    assert seconds == sorted(seconds)
    # Each line's metrics are the ones MLflow recorded for that epoch: its validation, its last training loss.
    client = MlflowClient(tracking_uri)
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    per_epoch = {key: history(key)[:3] for key in ("val/loss", "val/acc", "val/f1")}  # then the chosen checkpoint's
    train_loss = history("train/loss")
    for epoch, (_, _, metrics, *_) in enumerate(lines):
        shown = {name: float(value) for name, value in (item.rsplit(" ", 1) for item in metrics.split(", "))}
        assert {"train/loss", "val/loss", "val/acc", "val/f1", "val/mcc"} == set(shown), metrics
        for key, values in per_epoch.items():
            assert shown[key] == pytest.approx(values[epoch][1], abs=5e-5), (epoch, key)
        validated_at = per_epoch["val/loss"][epoch][0]
        last_loss = [value for step, value in train_loss if step <= validated_at][-1]
        assert shown["train/loss"] == pytest.approx(last_loss, abs=5e-5), epoch
