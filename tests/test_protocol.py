"""The protocol end to end: the checkpoint is chosen on the selection split, the test split is read once."""

import pytest
from mlflow.tracking import MlflowClient

from layerlens.pipeline import run_experiment
from tests.conftest import TINY


def only_run(tracking_uri):
    client = MlflowClient(tracking_uri)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])[0]


def test_without_a_selection_split_the_last_epoch_is_tested_and_nothing_is_selected(
    compose_run, tracking_uri, tmp_path
):
    headline = run_experiment(compose_run("task.selection_split=none"), tmp_path)
    _client, run = only_run(tracking_uri)
    assert not any(name.startswith("val/") for name in run.data.metrics)
    assert run.data.metrics["test/acc"] == headline
    assert run.data.tags["checkpoint"].endswith("last-epoch=1-step=6.ckpt")  # trainer=debug: 2 epochs of 3 batches


def test_the_chosen_checkpoint_is_the_best_epoch_on_the_selection_split(compose_run, tracking_uri, tmp_path):
    headline = run_experiment(compose_run("trainer.max_epochs=3"), tmp_path)
    client, run = only_run(tracking_uri)
    per_epoch = client.get_metric_history(run.info.run_id, "val/acc")[:-1]
    best = max(range(len(per_epoch)), key=lambda i: (per_epoch[i].value, -i))  # the first of equals is kept
    assert len(per_epoch) == 3 and headline == pytest.approx(per_epoch[best].value)
    assert f"best-epoch={best}-" in run.data.tags["checkpoint"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([*TINY, "task.selection_split=none"], "task.selection_split: a search chooses on the selection split"),
        (
            ["model=tiny_llama", "trainer=debug", "task=sft", "task.headline_metric=val/loss"],
            "task.headline_metric: val/loss is the lower the better and the search would maximise it",
        ),
    ],
)
def test_a_search_that_would_choose_on_the_test_split_or_maximise_a_loss_is_refused_by_name(
    tmp_path, call_module, overrides, message
):
    result = call_module(
        "run",
        "-m",
        "hparams_search=lr_budget",
        *overrides,
        "hydra.sweeper.n_trials=1",
        "logger=none",
        f"hydra.sweep.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert message in result.stderr
