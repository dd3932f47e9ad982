"""Bad input: one line naming what is wrong, a non-zero exit, and any run already started marked FAILED."""

import csv
import math
import re
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from layerlens.errors import LayerLensError
from layerlens.lens import baseline
from layerlens.lens.profiling import profile_sites
from layerlens.paths import CONF_DIR
from layerlens.pipeline import run_experiment
from layerlens.settings import resolve_settings
from tests.conftest import REPO, copy_store, run_module
from tests.test_data import MRPC_HEADER, write_tsv


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def all_runs(tracking_uri):
    client = MlflowClient(tracking_uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def options(group: str) -> str:
    return ", ".join(sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml")))


@pytest.mark.parametrize(
    "args,message,process",
    [
        # the options of a config group: its files in conf/<group>/, in order
        (["task=foo"], f"error: unknown task 'foo' (choose from: {options('task')})", "in-process"),
        (["model=gpt9"], f"error: unknown model 'gpt9' (choose from: {options('model')})", "in-process"),
        (
            ["-m", "baseline=lora,magic"],
            f"error: unknown baseline 'magic' (choose from: {options('baseline')})",
            "in-process",
        ),
        # the one error exit run as a user runs it: nothing else on stderr (no warning, no log line, no traceback)
        (
            ["model=tiny", "trainer.max_epochs=0"],
            "error: trainer.max_epochs must be an integer >= 1, got 0",
            "subprocess",
        ),
        (["model=tiny", "data.batch_size=-4"], "error: data.batch_size must be an integer >= 1, got -4", "in-process"),
        (["model=tiny", "baseline.lr=0"], "error: baseline.lr must be a positive number, got 0", "in-process"),
    ],
)
def test_entry_point_reports_bad_input_in_one_line(args, message, process, tmp_path, call_module):
    run = run_module if process == "subprocess" else call_module
    result = run("run", *args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
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
        (
            "baseline=layerlens baseline.planner.sizes.lora=[0,2]",
            "baseline.planner.sizes.lora must be integers >= 1, got 0",
        ),
        (
            "baseline=layerlens baseline.planner.sizes.lora=[] baseline.planner.sizes.adapter=[] "
            "baseline.planner.sizes.prefix=[]",
            "baseline.planner.sizes must list a size for adapter or lora or prefix (the methods of baseline.sites), got none",
        ),
        (
            "baseline=layerlens baseline.planner.sizes.prefix=[1,200]",
            "baseline.planner.sizes.prefix must be <= task.max_length (128), got 200",
        ),
        (
            "baseline=layerlens task.max_length=16",
            "baseline.planner.sizes.prefix must be <= task.max_length (16), got 32",
        ),
        (
            "baseline=layerlens baseline.sites=[query,magic]",
            "baseline.sites: magic is unknown (choose from: query, key, value, attn_out, ffn_in, ffn_out, attn_block, "
            "ffn_block, attention)",
        ),
        ("baseline=layerlens baseline.sites=[query,query]", "baseline.sites: query is listed twice"),
        (
            "baseline=layerlens baseline.profile.weights={grad_norm:0,fisher:0,sensitivity:0}",
            "baseline.profile.weights must have one weight > 0, got {'grad_norm': 0, 'fisher': 0, 'sensitivity': 0}",
        ),
        (
            "baseline=layerlens baseline.planner.gain_exponent=1.5",
            "baseline.planner.gain_exponent must be in (0, 1], got 1.5",
        ),
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
        # The tiny model (hidden 32): LoRA of rank 1 on a 32x32 projection adds 1 * (32 + 32) = 64 parameters and
        # 2 * 64 = 128 FLOPs a token; the L0 sites come first, then by kind, and L0.query is the first LoRA site.
        (
            "baseline=layerlens baseline.profile.num_batches=2 budget.params_pct=null budget.params=10",
            "budget.params must be >= 64 for any plan to fit (the cheapest option: lora of size 1 at L0.query), got 10",
        ),
        # The backbone: embeddings (30522 + 512 + 2) x 32 + LayerNorm 64 = 993216; each of the 2 layers 4 x (32 x 32
        # + 32) + 2 x 64 (LayerNorms) + 32 x 64 + 64 + 64 x 32 + 32 = 8544; pooler 1056; classifier 66: 1011426.
        # 100 * 64 / 1011426 = 0.0063278, rounded up to 4 digits.
        (
            "baseline=layerlens baseline.profile.num_batches=2 budget.params_pct=0.001",
            "budget.params_pct must be >= 0.006328 for any plan to fit (the cheapest option adds 64 parameters; "
            "the backbone has 1011426), got 0.001",
        ),
        (
            "baseline=layerlens baseline.profile.num_batches=2 budget.flops=100",
            "budget.flops must be >= 128 for any plan to fit (the cheapest option: lora of size 1 at L0.query), got 100",
        ),
        # AdaLoRA's rank 1 on a 32x32 module: A (1 x 32), B (32 x 1) and its singular value E (1): 65.
        (
            "baseline=adalora budget.params_pct=null budget.params=10",
            "budget.params must be >= 65 to hold one AdaLoRA rank (the cheapest target module's), got 10",
        ),
    ],
)
def test_bad_values_that_need_the_data_mark_the_started_run_failed(
    compose_run, tracking_uri, tmp_path, override, message
):
    with pytest.raises(LayerLensError) as err:
        run_experiment(compose_run(*override.split()), tmp_path)
    assert str(err.value) == message
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["layerlens.error"].startswith(message.split(" ")[0])


def test_more_profile_batches_than_the_train_split_has_names_how_many_it_has(compose_run, tracking_uri, tmp_path):
    cfg = compose_run("baseline=layerlens", "baseline.profile.num_batches=100000")
    with pytest.raises(LayerLensError) as err:
        run_experiment(cfg, tmp_path)
    # By the rule: MRPC's train.tsv less the selection holdout (task.selection_fraction of each class, rounded),
    # in batches of data.batch_size, the last one partial.
    with open(REPO / "layerlens/data/glue/MRPC/train.tsv", newline="", encoding="utf-8-sig") as f:
        classes = Counter(row["Quality"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    held = sum(round(cfg.task.selection_fraction * n) for n in classes.values())
    available = math.ceil((sum(classes.values()) - held) / cfg.data.batch_size)
    assert str(err.value) == (
        f"baseline.profile.num_batches must be <= {available} (the training batches available), got 100000"
    )
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED"


def test_a_train_time_budget_under_every_option_names_the_least_that_fits(
    compose_run, tracking_uri, tmp_path, monkeypatch
):
    profiles = []
    monkeypatch.setattr(baseline, "profile_sites", lambda *args: profiles.append(profile_sites(*args)) or profiles[-1])
    cfg = compose_run("baseline=layerlens", "baseline.profile.num_batches=2", "budget.train_time_pct=10")
    with pytest.raises(LayerLensError) as err:
        run_experiment(cfg, tmp_path)
    match = re.fullmatch(
        r"budget\.train_time_pct must be >= ([0-9.]+) for any plan to fit \(the cheapest option in "
        r"training time: (.+)\), got 10",
        str(err.value),
    )
    assert match, str(err.value)

    # By the rule: the least training time adapts one site of the top layer only. The backbone then costs
    # (2 * 1 + (layers - 1) / epochs) / (3 * layers) of full fine-tuning (the frozen layers below, cached, run in
    # the first epoch only), and the site its FLOPs over full fine-tuning's (layers x a layer's FLOPs; the tokens
    # and the throughput cancel). A layer: 4 hidden x hidden maps, 2 hidden x ffn maps, attention 4 * seq * hidden
    # (seq: the profiled mean padded length). Every default site kind's size-1 option adds 4 * hidden FLOPs:
    # LoRA 2 * (hidden + hidden), adapter 4 * hidden * 1, prefix 4 * 1 * hidden.
    layers, hidden, ffn = cfg.model.num_hidden_layers, cfg.model.hidden_size, cfg.model.intermediate_size
    epochs, seq = cfg.trainer.max_epochs, profiles[0].seq_len  # trainer=debug: 2 epochs, of 3 batches each
    layer = 2 * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * seq * hidden
    needed = 100 * ((2 + (layers - 1) / epochs) / (3 * layers) + 4 * hidden / (layers * layer))
    assert needed <= float(match[1]) == pytest.approx(math.ceil(needed * 100) / 100)  # rounded up to 4 digits
    top = layers - 1
    tied = (
        {f"lora of size 1 at L{top}.{kind}" for kind in ("query", "key", "value", "attn_out")}
        | {f"adapter of size 1 at L{top}.{kind}" for kind in ("attn_block", "ffn_block")}
        | {f"prefix of size 1 at L{top}.attention"}
    )
    assert match[2] in tied  # any of them: they tie
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED" and run.data.tags["layerlens.error"].startswith("budget.train_time_pct")


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


def test_bad_data_file_from_the_command_line(tmp_path, call_module, store_template):
    data_dir = bad_data_dir(tmp_path / "data", "bad_label")
    uri = copy_store(store_template, tmp_path / "mlflow.db")
    result = call_module(
        "run", "model=tiny", f"task.data_dir={data_dir}", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}
    )
    assert result.returncode != 0
    lines = error_lines(result)
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert (
        lines[-1]
        == f"error: {data_dir}/train.tsv:4: label column 'Quality' holds 'yes', expected one of: integers 0..1"
    )
    assert [r.info.status for r in all_runs(uri)] == ["FAILED"]


def test_evaluate_without_run_id_fails_in_one_line(tmp_path):
    result = run_module(
        "evaluate", "file=x.tsv", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    )
    assert result.returncode != 0
    assert error_lines(result) == [
        "error: run_id is required: python -m layerlens.evaluate run_id=<mlflow run id> file=<tsv>"
    ]
