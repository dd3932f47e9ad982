"""LayerLens's MLflow experiments are model training to MLflow's UI, and the README's link opens the runs table."""

import re
from importlib.util import find_spec
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from layerlens.tracking import MlflowTracker
from layerlens.tracking.mlflow_tracker import EXPERIMENT_KIND_TAG, MODEL_TRAINING
from tests.conftest import REPO, copy_store


def kind(client: MlflowClient, name: str) -> str | None:
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, name
    return experiment.tags.get(EXPERIMENT_KIND_TAG)


def test_experiments_are_created_as_model_training_and_older_ones_given_that_kind(tmp_path, store_template):
    uri = copy_store(store_template, tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    client.create_experiment("layerlens-rte")  # as LayerLens created them before: no kind
    client.create_experiment("layerlens-cola", tags={EXPERIMENT_KIND_TAG: "genai_development"})  # a user's choice
    for task in ("mrpc", "rte", "cola"):
        with MlflowTracker(uri, f"layerlens-{task}").start_run("lora", {}, OmegaConf.create({})):
            pass
    assert kind(client, "layerlens-mrpc") == MODEL_TRAINING  # new
    assert kind(client, "layerlens-rte") == MODEL_TRAINING  # existing, without a kind
    assert kind(client, "layerlens-cola") == "genai_development"  # a kind already set is left alone


def ui_bundle() -> str:
    spec = find_spec("mlflow")
    assert spec is not None and spec.origin is not None
    js = Path(spec.origin).parent / "server" / "js" / "build" / "static" / "js"
    if not js.is_dir():
        pytest.skip("this mlflow install has no UI (mlflow-skinny)")
    return "".join(path.read_text(errors="replace") for path in sorted(js.glob("*.js")))


def test_the_installed_ui_reads_the_kind_tag_and_the_readmes_view_switch():
    bundle = ui_bundle()
    # The tag and its model-training value, as the UI's kind enum spells them.
    assert f'"{EXPERIMENT_KIND_TAG}"' in bundle
    assert f'CUSTOM_MODEL_DEVELOPMENT="{MODEL_TRAINING}"' in bundle
    # The view switch that the README's link sets: the URL's workflowType, machine_learning for the runs table.
    assert 'get("workflowType")' in bundle and 'MACHINE_LEARNING="machine_learning"' in bundle
    browse = (REPO / "README.md").read_text().split("**Browse**", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"http://127\.0\.0\.1:5000/#/experiments/<[^>]+>\?workflowType=machine_learning", browse), browse
