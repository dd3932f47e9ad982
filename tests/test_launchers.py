"""Clusters and multiple devices: the SLURM launcher composes as the README sets it, trainer=ddp builds a DDP
trainer, and a real two-process DDP run on CPU records one run, from rank 0, with metrics reduced over both."""

import json
import re
import threading

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from mlflow.tracking import MlflowClient

from layerlens.cli import check_group_choices
from layerlens.errors import LayerLensError
from layerlens.lens.baseline import PLAN_FILE, read_plan
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


def test_fsdp_trainer_composes_with_each_parameter_keeping_its_own_requires_grad_and_needs_a_gpu():
    cfg = compose_config("run", ["trainer=fsdp", "trainer.devices=2"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy.kwargs["use_orig_params"] is True
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (2, 1)
    with pytest.raises(LayerLensError, match=r"^trainer: The strategy `fsdp` requires a GPU accelerator"):
        instantiate_node(compose_config("run", ["trainer=fsdp", "trainer.accelerator=cpu"]), "trainer", logger=False)


def test_two_process_cpu_ddp_run_plans_and_records_once_from_rank_zero(tmp_path, store_template):
    """The plan too: rank 0 profiles and plans, rank 1 trains the plan rank 0 wrote (issue 20.7)."""
    uri = copy_store(store_template, tmp_path / "mlflow.db")
    result = run_module(
        "run",
        "model=tiny",
        "baseline=layerlens",
        "baseline.profile.num_batches=2",
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
    read = f"plan read from {run_dir / 'plan.json'}, written by global rank 0"
    assert read in logs[1].read_text() and "plan read from" not in logs[0].read_text()


def test_a_rank_waits_for_the_plan_rank_zero_writes_and_fails_in_one_line_without_it(tmp_path):
    path = tmp_path / PLAN_FILE
    with pytest.raises(LayerLensError, match=rf"^{re.escape(str(path))}: no plan there$"):
        read_plan(path)
    with pytest.raises(LayerLensError, match=r": no plan there after waiting 0.2 s for global rank 0 to write it$"):
        read_plan(path, wait_s=0.2, poll_s=0.05)
    writer = threading.Timer(0.3, lambda: path.write_text('{"sites": []}'))
    writer.start()
    assert read_plan(path, wait_s=30, poll_s=0.05) == '{"sites": []}'
    writer.join()
