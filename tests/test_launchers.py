"""Clusters and multiple devices: the SLURM launcher composes as the README sets it, trainer=ddp builds a DDP
trainer, and a real two-process DDP run on CPU records one run, from rank 0, with metrics reduced over both."""

import json
import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from mlflow.tracking import MlflowClient

from layerlens.cli import check_group_choices
from layerlens.paths import CONF_DIR
from layerlens.settings import instantiate_node
from tests.conftest import compose_config, copy_store, run_module


@pytest.mark.parametrize("launcher", ["joblib", "submitit_slurm"])
def test_the_group_check_lets_hydra_launcher_plugins_through(launcher):
    # conf/hydra/launcher/ holds only the project's own launcher configs: the plugins' must pass the check too.
    check_group_choices(["-m", f"hydra/launcher={launcher}"])


def test_the_project_slurm_launcher_config_sets_the_cluster_fields_and_one_task_per_device():
    check_group_choices(["-m", "hydra/launcher=slurm"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "run",
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp", "trainer.devices=4"],
            return_hydra_config=True,
        )
    launcher = instantiate(cfg.hydra.launcher)  # builds the launcher; nothing is submitted before launch()
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert (params["partition"], params["timeout_min"], params["cpus_per_task"], params["mem_gb"]) == (
        "gpu",
        240,
        8,
        64,
    )
    assert params["gpus_per_node"] == params["tasks_per_node"] == cfg.trainer.devices == 4
    assert params["submitit_folder"].startswith(f"{cfg.hydra.sweep.dir}/.submitit/")


def test_ddp_trainer_composes_with_configurable_devices_and_nodes():
    cfg = compose_config("run", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=1"])
    trainer = instantiate_node(cfg, "trainer", logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert (trainer.num_devices, trainer.num_nodes) == (2, 1)


def test_two_process_cpu_ddp_run_records_once_from_rank_zero(tmp_path, store_template):
    uri = copy_store(store_template, tmp_path / "mlflow.db")
    result = run_module(
        "run",
        "model=tiny",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "distributed_backend=gloo" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output

    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and {"val/acc", "test/acc"} <= set(run.data.metrics)
    (run_dir,) = (tmp_path / "outputs").glob("*/*/*")
    assert json.loads((run_dir / "run.json").read_text())["mlflow_run_id"] == run.info.run_id
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1

    # Rank 1 evaluates other rows than rank 0, so only metrics reduced over both agree.
    logs = [run_dir / "run.log", run_dir / "train_ddp_process_1.log"]
    chosen = re.compile(r"checkpoint best-\S+ \(best on the selection split by val/acc\): (.+?); trainable")
    scores = [chosen.findall(log.read_text()) for log in logs]
    assert len(scores[0]) == len(scores[1]) == 1 and scores[0] == scores[1]
