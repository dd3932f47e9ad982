"""Bad input: one line naming what is wrong, a non-zero exit, and any run already started marked FAILED."""

import pytest
from mlflow.tracking import MlflowClient

from layerlens.errors import LayerLensError
from layerlens.pipeline import run_experiment
from layerlens.settings import resolve_settings
from tests.conftest import run_module
from tests.test_data import MRPC_HEADER, write_tsv


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def all_runs(tracking_uri):
    client = MlflowClient(tracking_uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(
    "args,message",
    [
        (["task=foo"], "error: unknown task 'foo' (choose from: cola, mrpc, rte, stsb)"),
        (["model=gpt9"], "error: unknown model 'gpt9' (choose from: bert_base, deberta_v3_base, minilm_l6, roberta_base, tiny)"),
        (["-m", "baseline=lora,magic"], "error: unknown baseline 'magic' (choose from: adalora, full_ft, layerlens, lora)"),
        (["model=tiny", "trainer.max_epochs=0"], "error: trainer.max_epochs must be an integer >= 1, got 0"),
        (["model=tiny", "data.batch_size=-4"], "error: data.batch_size must be an integer >= 1, got -4"),
        (["model=tiny", "baseline.lr=0"], "error: baseline.lr must be a positive number, got 0"),
    ],
)
def test_entry_point_reports_bad_input_in_one_line(args, message, tmp_path):
    result = run_module("run", *args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert result.returncode != 0
    assert error_lines(result) == [message]


@pytest.mark.parametrize(
    "override,field",
    [
        ("trainer.max_epochs=-1", "trainer.max_epochs"),
        ("trainer.max_epochs=abc", "trainer.max_epochs"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.eval_batch_size=0", "data.eval_batch_size"),
        ("baseline=full_ft baseline.lr=-1e-5", "baseline.lr"),
        ("baseline=lora baseline.lr=0", "baseline.lr"),
        ("baseline=lora baseline.r=0", "baseline.r"),
        ("budget.params_pct=150", "budget.params_pct"),
        ("task.max_length=1", "task.max_length"),
        ("task.num_labels=1.5", "task.num_labels"),
        ("task.headline_metric=val/auc", "task.headline_metric"),
        ("task.label_column=''", "task.label_column"),
        ("logger.experiment_name=''", "logger.experiment_name"),
        ("optim.warmup_ratio=1.5", "optim.warmup_ratio"),
        ("model.pooling=max", "model.pooling"),
        ("budget.params_pct=0", "budget.params_pct"),
        ("budget.params_pct=abc", "budget.params_pct"),
        ("budget.params=0", "budget.params"),
        ("budget.flops=-1", "budget.flops"),
        ("budget.latency_ms=abc", "budget.latency_ms"),
        ("budget.params=inf", "budget.params"),
        ("baseline=lora baseline.r=true", "baseline.r"),
        ("baseline=lora baseline.bias=some", "baseline.bias"),
        ("baseline=lora baseline.layers_to_transform=[-1]", "baseline.layers_to_transform"),
        ("baseline=adalora baseline.init_r=0", "baseline.init_r"),
        ("baseline=adalora baseline.orth_reg_weight=-1", "baseline.orth_reg_weight"),
        ("baseline=layerlens baseline.planner.sizes.prefix=4", "baseline.planner.sizes.prefix"),
        ("baseline=layerlens baseline.planner.gain_exponent=0", "baseline.planner.gain_exponent"),
        ("baseline=layerlens baseline.planner.flops_per_s=0", "baseline.planner.flops_per_s"),
        ("baseline=layerlens baseline.profile.num_batches=1", "baseline.profile.num_batches"),
        ("baseline=layerlens baseline.profile.weights.fisher=-1", "baseline.profile.weights.fisher"),
        ("baseline=layerlens baseline.lora_alpha_ratio=0", "baseline.lora_alpha_ratio"),
        ("baseline=full_ft baseline.lr=inf", "baseline.lr"),
        ("optim.weight_decay=-1", "optim.weight_decay"),
        ("model.num_hidden_layers=0", "model.num_hidden_layers"),
        ("model.hidden_size=30 model.num_attention_heads=4", "model.hidden_size"),
    ],
)
def test_bad_config_values_fail_before_any_run_is_recorded(compose_run, tracking_uri, tmp_path, override, field):
    with pytest.raises(LayerLensError, match=rf"^{field.replace('.', '[.]')} must be"):
        run_experiment(compose_run(*override.split()), tmp_path)
    assert all_runs(tracking_uri) == []


@pytest.mark.parametrize(
    "override,message",
    [
        ("budget.params_pct=150", "budget.params_pct must be in (0, 100] or null, got 150"),
        ("budget.params=-5", "budget.params must be a positive number or null, got -5"),
        ("budget.train_time_pct=0", "budget.train_time_pct must be a positive number or null, got 0"),
        ("baseline=lora baseline.r=0", "baseline.r must be an integer >= 1, got 0"),
        ("baseline=layerlens baseline.planner.sizes.lora=[0,2]", "baseline.planner.sizes.lora must be integers >= 1, got 0"),
        ("baseline=layerlens baseline.planner.sizes.lora=[] baseline.planner.sizes.adapter=[] "
         "baseline.planner.sizes.prefix=[]",
         "baseline.planner.sizes must list a size for adapter or lora or prefix (the methods of baseline.sites), got none"),
        ("baseline=layerlens baseline.planner.sizes.prefix=[1,200]",
         "baseline.planner.sizes.prefix must be <= task.max_length (128), got 200"),
        ("baseline=layerlens task.max_length=16", "baseline.planner.sizes.prefix must be <= task.max_length (16), got 32"),
        ("baseline=layerlens baseline.sites=[query,magic]",
         "baseline.sites: magic is unknown (choose from: query, key, value, attn_out, ffn_in, ffn_out, attn_block, "
         "ffn_block, attention)"),
        ("baseline=layerlens baseline.sites=[query,query]", "baseline.sites: query is listed twice"),
        ("baseline=layerlens baseline.profile.weights={grad_norm:0,fisher:0,sensitivity:0}",
         "baseline.profile.weights must have one weight > 0, got {'grad_norm': 0, 'fisher': 0, 'sensitivity': 0}"),
        ("baseline=layerlens baseline.planner.gain_exponent=1.5", "baseline.planner.gain_exponent must be in (0, 1], got 1.5"),
    ],
)
def test_bad_config_values_are_one_line_naming_field_and_range(compose_run, tracking_uri, tmp_path, override, message):
    with pytest.raises(LayerLensError) as err:
        run_experiment(compose_run(*override.split()), tmp_path)
    assert str(err.value) == message
    assert all_runs(tracking_uri) == []


def test_a_prefix_is_only_checked_against_max_length_when_a_site_takes_one(compose_run):
    resolve_settings(compose_run("baseline=layerlens", "task.max_length=16", "baseline.sites=[query,value]"))


@pytest.mark.parametrize(
    "override,message",
    [
        ("baseline=layerlens baseline.profile.num_batches=100000",
         "baseline.profile.num_batches must be <= 459 (the training batches available), got 100000"),
        ("baseline=layerlens baseline.profile.num_batches=2 budget.params_pct=null budget.params=10",
         "budget.params must be >= 64 for any plan to fit (the cheapest option: lora of size 1 at L0.query), got 10"),
        ("baseline=layerlens baseline.profile.num_batches=2 budget.params_pct=0.001",
         "budget.params_pct must be >= 0.006328 for any plan to fit (the cheapest option adds 64 parameters; "
         "the backbone has 1011426), got 0.001"),
        ("baseline=layerlens baseline.profile.num_batches=2 budget.flops=100",
         "budget.flops must be >= 128 for any plan to fit (the cheapest option: lora of size 1 at L0.query), got 100"),
        ("baseline=layerlens baseline.profile.num_batches=2 budget.train_time_pct=10",
         "budget.train_time_pct must be >= 41.93 for any plan to fit (the cheapest option in training time: adapter "
         "of size 1 at L1.attn_block), got 10"),
        ("baseline=adalora budget.params_pct=null budget.params=10",
         "budget.params must be >= 65 to hold one AdaLoRA rank (the cheapest target module's), got 10"),
    ],
)
def test_bad_values_that_need_the_data_mark_the_started_run_failed(compose_run, tracking_uri, tmp_path, override,
                                                                   message):
    with pytest.raises(LayerLensError) as err:
        run_experiment(compose_run(*override.split()), tmp_path)
    assert str(err.value) == message
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["layerlens.error"].startswith(message.split(" ")[0])


def bad_data_dir(tmp_path, kind: str):
    tmp_path.mkdir(exist_ok=True)
    good = [["1", "1", "2", "a b", "c d"], ["0", "3", "4", "e f", "g h"]]
    if kind == "wrong_columns":
        write_tsv(tmp_path / "train.tsv", ["label", "text"], [["1", "x"]])
    elif kind == "bad_label":
        write_tsv(tmp_path / "train.tsv", MRPC_HEADER, [*good, ["yes", "5", "6", "i", "j"]])
    elif kind == "missing_dev":
        write_tsv(tmp_path / "train.tsv", MRPC_HEADER, good)
    return tmp_path


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing_train", r"train\.tsv: task file not found"),
        ("missing_dev", r"dev\.tsv: task file not found"),
        ("wrong_columns", r"train\.tsv: missing column\(s\) '#1 String', '#2 String', 'Quality'"),
        ("bad_label", r"train\.tsv:4: label column 'Quality' holds 'yes'"),
    ],
)
def test_bad_data_files_mark_the_started_run_failed(compose_run, tracking_uri, tmp_path, kind, message):
    data_dir = bad_data_dir(tmp_path / "data", kind)
    with pytest.raises(LayerLensError, match=message):
        run_experiment(compose_run(f"task.data_dir={data_dir}"), tmp_path / "out")
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["layerlens.error"].startswith(str(data_dir))


def test_bad_data_file_from_the_command_line(tmp_path):
    data_dir = bad_data_dir(tmp_path / "data", "bad_label")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_module("run", "model=tiny", f"task.data_dir={data_dir}", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode != 0
    lines = error_lines(result)
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert lines[-1] == f"error: {data_dir}/train.tsv:4: label column 'Quality' holds 'yes', expected one of: integers 0..1"
    assert [r.info.status for r in all_runs(uri)] == ["FAILED"]


def test_evaluate_without_run_id_fails_in_one_line(tmp_path):
    result = run_module("evaluate", "file=x.tsv", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert result.returncode != 0
    assert error_lines(result) == ["error: run_id is required: python -m layerlens.evaluate run_id=<mlflow run id> file=<tsv>"]
