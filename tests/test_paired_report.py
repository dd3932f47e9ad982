"""The report's seed-by-seed comparison of baselines, read from a JSONL log or an MLflow store alike; and the
paired-seeds job runner, which calls it."""

import json
import subprocess
import sys
from statistics import mean, stdev

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy.stats import wilcoxon

from layerlens.analysis.assemble import make_report
from layerlens.analysis.comparison import summarise
from layerlens.analysis.paired import compare_pairs, parse_pairs
from layerlens.analysis.runs import finished_runs
from layerlens.errors import LayerLensError
from layerlens.report import compare_overrides
from layerlens.tracking.mlflow_tracker import flatten
from tests.conftest import REPO, compose_config, copy_store, run_module

# seed: (a's test/acc, a's test/f1, b's test/acc, b's test/f1)
SCORES = {
    0: (0.80, 0.86, 0.78, 0.85),
    1: (0.82, 0.87, 0.80, 0.86),
    2: (0.79, 0.85, 0.80, 0.86),
    3: (0.81, 0.86, 0.81, 0.85),
    4: (0.83, 0.88, 0.79, 0.84),
}
# a − b at seeds 0-4, as decimals: a higher at three seeds in accuracy, equal at one, lower at one.
ACC_DIFFERENCES = [0.02, 0.02, -0.01, 0.0, 0.04]
F1_DIFFERENCES = [0.01, 0.01, -0.01, 0.01, 0.04]
C_SEEDS = {0: 0.70, 1: 0.75, 2: 0.72, 7: 0.90}  # c's test/acc (test/f1 0.8): seeds 3 and 4 missing, 7 a lacks


def record(baseline: str, seed: int, acc: float, f1: float, status: str = "FINISHED") -> dict:
    """One line as JsonlTracker writes it: utility_seed follows the seed (${seed}), as layerlens.yaml's does."""
    config = {
        "seed": seed,
        "task": {"name": "mrpc", "headline_metric": "val/acc", "test_split": "dev", "selection_split": "holdout"},
        "model": {"name": "tiny"},
        "baseline": {"name": baseline, "lr": 0.001, "planner": {"utility_seed": seed}},
        "logger": {"path": "runs.jsonl"},
    }
    return {
        "run_name": f"{baseline}-mrpc-s{seed}",
        "status": status,
        "error": None,
        "tags": {"baseline": baseline, "seed": str(seed), "task": "mrpc", "model": "tiny"},
        "metrics": {
            "val/acc": 0.5,
            "test/acc": acc,
            "test/f1": f1,
            "test/loss": 0.4,
            "params/trainable": 100.0,
            "params/trainable_pct": 1.0,
            "time/train_s": 10.0 + seed,
        },
        "config": config,
    }


def records() -> list[dict]:
    lines = [record("b", 0, 0.50, 0.50)]  # a first run of b at seed 0, run again below: the later one counts
    lines += [
        record(name, seed, *scores[i : i + 2]) for seed, scores in SCORES.items() for name, i in (("a", 0), ("b", 2))
    ]
    lines += [record("c", seed, acc, 0.8) for seed, acc in C_SEEDS.items()]
    return [*lines, record("a", 5, 0.99, 0.99, status="KILLED"), record("a", 6, 0.99, 0.99, status="FAILED")]


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps({**line, "end_time": 1.8e9 + i}) + "\n" for i, line in enumerate(records())))
    return path


@pytest.fixture
def store(tmp_path, store_template):
    """The same runs in an MLflow store, logged as MlflowTracker logs them (params: the flattened config)."""
    uri = copy_store(store_template, tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("layerlens-mrpc")
    for i, line in enumerate(records()):
        run = client.create_run(
            experiment, start_time=1_800_000_000_000 + 1000 * i, tags=line["tags"], run_name=line["run_name"]
        )
        client.log_batch(
            run.info.run_id,
            params=[Param(k, v) for k, v in flatten(line["config"]).items()],
            metrics=[Metric(k, v, 0, 0) for k, v in line["metrics"].items()],
        )
        client.set_terminated(run.info.run_id, line["status"])
    return uri


def report(source_override: str, out_dir, *overrides: str):
    return make_report(compose_config("report", [source_override, f"out_dir={out_dir}", *overrides]))


def test_paired_statistics_from_a_jsonl_log_are_exact(log, tmp_path):
    files = report(f"source={log}", tmp_path / "out", "compare=[a,b]")
    stats = pd.read_csv(files.paired[0]).set_index("metric")
    assert list(stats.index) == ["test/acc", "test/f1"]  # the task's metrics on the test split; not the loss
    for metric, differences, wtl in (("test/acc", ACC_DIFFERENCES, (3, 1, 1)), ("test/f1", F1_DIFFERENCES, (4, 0, 1))):
        row = stats.loc[metric]
        assert (row["a"], row["b"], row["n_seeds"], row["seeds"]) == ("a", "b", 5, "0,1,2,3,4")
        assert row["mean_difference"] == pytest.approx(mean(differences), abs=1e-12)
        assert row["std_difference"] == pytest.approx(stdev(differences), abs=1e-12)
        assert (row["wins"], row["ties"], row["losses"]) == wtl
        assert row["wilcoxon_p"] == pytest.approx(wilcoxon(differences).pvalue, rel=1e-12)
    per_seed = pd.read_csv(files.paired[1])
    acc = per_seed[per_seed["metric"] == "test/acc"]
    assert list(acc["seed"]) == [0, 1, 2, 3, 4]  # b's seed 0 is its second run (0.78), not the first (0.50)
    assert list(acc["b_value"]) == pytest.approx([SCORES[s][2] for s in range(5)])
    assert list(acc["difference"]) == pytest.approx(ACC_DIFFERENCES)

    text = files.markdown.read_text()
    assert f"Source: JSONL log {log}" in text
    assert "Seed by seed, a against b, task mrpc, model tiny, test split: 5 seeds both finished (0–4)." in text
    p = wilcoxon(ACC_DIFFERENCES).pvalue
    assert f"| test/acc | {mean(ACC_DIFFERENCES):.4f} ± {stdev(ACC_DIFFERENCES):.4f} | 3 / 1 / 1 | {p:.3g} |" in text
    # all but seed 2; seed 3 ties in acc
    assert (
        "a at least as good as b (higher, or lower in test/loss, test/perplexity) in every metric at 4 of 5 seeds."
        in text
    )
    table = pd.read_csv(files.csv).set_index("baseline")  # the KILLED and FAILED runs left out; one variant each
    assert table.loc["a", "n_runs"] == 5 and table.loc["b", "seeds"] == "0,1,2,3,4"
    assert table.loc["b", "acc_mean"] == pytest.approx(mean(SCORES[s][2] for s in range(5)))


def test_the_same_runs_in_an_mlflow_store_give_the_same_numbers(log, store, tmp_path):
    from_log = report(f"source={log}", tmp_path / "log", "compare=[[a,b],[a,c]]")
    from_store = report(f"tracking_uri={store}", tmp_path / "store", "compare=[[a,b],[a,c]]")
    for log_file, store_file in zip(from_log.paired, from_store.paired):
        pd.testing.assert_frame_equal(pd.read_csv(log_file), pd.read_csv(store_file))
    columns = ["baseline", "variant", "n_runs", "seeds", "acc_mean", "acc_std", "f1_mean", "train_s_mean"]
    pd.testing.assert_frame_equal(pd.read_csv(from_log.csv)[columns], pd.read_csv(from_store.csv)[columns])
    assert f"Source: MLflow store {store}" in from_store.markdown.read_text()


def test_a_pair_with_missing_seeds_is_paired_on_the_common_seeds_only(log):
    (comparison,) = compare_pairs(finished_runs(str(log)), [("a", "c")], ["test/acc"])
    assert (comparison.seeds, comparison.only_a, comparison.only_b) == (("0", "1", "2"), ("3", "4"), ("7",))
    (acc,) = comparison.metrics
    differences = [SCORES[s][0] - C_SEEDS[s] for s in (0, 1, 2)]
    assert list(acc.differences) == pytest.approx(differences)
    assert (acc.wins, acc.ties, acc.losses) == (3, 0, 0)
    assert acc.p == pytest.approx(wilcoxon([round(d, 9) for d in differences]).pvalue)
    assert comparison.markdown()[0] == (
        "Seed by seed, a against c, task mrpc, model tiny, test split: 3 seeds both "
        "finished (0–2); not paired: a alone at seeds 3–4, c alone at seed 7."
    )


def test_one_seed_or_no_difference_gives_no_p_value(log):
    runs = finished_runs(str(log))
    (one,) = compare_pairs(runs[runs["seed"].isin(["0", "7"])], [("a", "c")], ["test/acc"])
    assert one.seeds == ("0",) and pd.isna(one.metrics[0].p) and pd.isna(one.metrics[0].std)
    (same,) = compare_pairs(runs[runs["seed"] == "3"], [("a", "b")], ["test/acc"])
    assert (same.metrics[0].ties, same.metrics[0].mean) == (1, 0.0) and pd.isna(same.metrics[0].p)


@pytest.mark.parametrize(
    "value,pairs",
    [
        ("a,b", [("a", "b")]),
        (["a", "b"], [("a", "b")]),
        (["a,b", "a,c"], [("a", "b"), ("a", "c")]),
        ([["a", "b"], ["c", "a"]], [("a", "b"), ("c", "a")]),
        (None, []),
    ],
)
def test_compare_takes_a_pair_or_a_list_of_pairs(value, pairs):
    assert parse_pairs(value) == pairs


def test_compare_on_the_command_line_is_one_quoted_value_or_a_list():
    assert compare_overrides(["source=x.jsonl"]) == ["source=x.jsonl"]
    assert compare_overrides(["compare=a,b", "sweep=s"]) == ["sweep=s", "compare='a,b'"]
    assert compare_overrides(["compare=a,b", "compare=[a,c]"]) == ["compare=['a,b',[a,c]]"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["compare=[a,nope]"], "compare: no finished run of baseline 'nope' in JSONL log {log} (baselines: a, b, c)"),
        (
            ["compare=a"],
            "compare: each pair is two different baselines, a,b (several: compare=a,b compare=c,d), got 'a'",
        ),
        (["compare='a,a'"], "compare: each pair is two different baselines"),
        (["compare=[a,b]", "metrics=[val/acc]"], "metrics: the report quotes the test split, test/*, got 'val/acc'"),
        (["compare=[a,b]", "metrics=test/mcc"], "metrics: run a-mrpc-s0 in JSONL log {log} logged no test/mcc"),
    ],
)
def test_bad_compare_or_metrics_is_refused_in_one_line_naming_the_field(log, tmp_path, overrides, message):
    with pytest.raises(LayerLensError) as err:
        report(f"source={log}", tmp_path, *overrides)
    assert str(err.value).startswith(message.format(log=log)) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "line 2 is not JSON (Expecting property name enclosed in double quotes, column 2)"),
        ("[1, 2]", "line 2 is not a JSON object, got list"),
        (
            '{"status": "FINISHED", "tags": {}, "metrics": [], "config": {}}',
            "line 2: metrics must be a JSON object, got []",
        ),
        (
            '{"status": "FINISHED", "tags": {}, "metrics": {"test/acc": "high"}, "config": {}}',
            "line 2: metrics.test/acc must be a number, got 'high'",
        ),
    ],
)
def test_a_bad_jsonl_line_is_refused_naming_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(records()[1]) + "\n" + line + "\n")
    with pytest.raises(LayerLensError) as err:
        finished_runs(str(path))
    assert str(err.value) == f"source: {path} {message}"
    with pytest.raises(LayerLensError, match=f"source: no JSONL log at {tmp_path / 'nope.jsonl'}"):
        finished_runs(str(tmp_path / "nope.jsonl"))


def test_the_command_line_compares_several_pairs_and_refuses_an_unknown_baseline(log, tmp_path, call_module):
    # The report entry point as a user runs it, in a subprocess; its error exit in this process.
    result = run_module(
        "report", f"source={log}", "compare=a,b", "compare=a,c", f"out_dir={tmp_path / 'out'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a against b, seed by seed" in result.stdout and "a against c, seed by seed" in result.stdout
    assert f"Source: JSONL log {log}" in " ".join(result.stdout.split())  # the captions say where they come from
    stats = pd.read_csv(tmp_path / "out" / "comparison-all-paired.csv")
    assert list(zip(stats["b"], stats["n_seeds"])) == [("b", 5), ("b", 5), ("c", 3), ("c", 3)]
    bad = call_module("report", f"source={log}", "compare=a,nope", f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        f"error: compare: no finished run of baseline 'nope' in JSONL log {log} (baselines: a, b, c)"
    ]


def test_configurations_are_told_apart_by_what_every_run_logged_and_not_by_the_seed():
    def run(i, seed, config):
        return {
            "run_id": f"r{i}",
            "run_name": f"a-{seed}",
            "task": "mrpc",
            "model": "m",
            "baseline": "a",
            "seed": str(seed),
            "start_time": i,
            "test/acc": 0.7 + i / 100,
            "config": config,
        }

    rows = [
        run(0, 0, {"lr": "0.1", "utility_seed": "0"}),
        run(1, 1, {"lr": "0.1", "utility_seed": "1"}),
        run(2, 2, {"lr": "0.1", "utility_seed": "2", "added_later": "x"}),
    ]
    table = summarise(pd.DataFrame(rows), [])
    assert list(table["variant"]) == [""] and table.loc[0, "n_runs"] == 3
    rerun = run(3, 1, {"lr": "0.1", "utility_seed": "1"})  # seed 1 again: the later run replaces the earlier
    table = summarise(pd.DataFrame([*rows, rerun]), [])
    assert table.loc[0, "n_runs"] == 3 and table.loc[0, "acc_mean"] == pytest.approx(mean([0.70, 0.73, 0.72]))
    other = run(4, 1, {"lr": "0.2", "utility_seed": "1"})
    assert sorted(summarise(pd.DataFrame([*rows, other]), [])["variant"]) == ["lr=0.1", "lr=0.2"]
    with pytest.raises(
        LayerLensError,
        match=r"compare: a has 2 configurations on task mrpc, model m in the runs "
        r"\(lr=0.1 \| lr=0.2\)",
    ):
        compare_pairs(
            pd.DataFrame([*rows, other, {**run(5, 0, {"lr": "0.1", "utility_seed": "0"}), "baseline": "b"}]),
            [("a", "b")],
        )


PAIRED_SEEDS = REPO / "experiments" / "paired_seeds.py"


def paired_seeds_process(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PAIRED_SEEDS), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_paired_seeds_runs_seed_by_seed_skips_finished_runs_and_writes_the_reports_tables(log, tmp_path, call_module):
    def paired_seeds(*args: str, cwd) -> subprocess.CompletedProcess:  # the script in this process
        return call_module(PAIRED_SEEDS, *args, cwd=cwd)

    help_text = paired_seeds("--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "--analyse DIR" in help_text.stdout
    order = paired_seeds("--dry-run", "--jobs", "lora,layerlens:0-1,5", "--out", str(tmp_path / "new"), cwd=tmp_path)
    assert order.stdout.split("\n")[:-1] == [
        "lora s0",
        "layerlens s0",
        "lora s1",
        "layerlens s1",
        "lora s5",
        "layerlens s5",
    ]
    assert not (tmp_path / "new").exists()
    # In the log's folder: a's seeds 0-4 and b's 0-4 finished; a's 5 KILLED and 6 FAILED run again.
    resumed = paired_seeds("--dry-run", "--jobs", "a,b:3-6", "--out", str(log.parent), cwd=tmp_path)
    assert resumed.stdout.split("\n")[:-1] == ["a s5", "b s5", "a s6", "b s6"]
    bad = paired_seeds("--dry-run", "--jobs", "lora:x", cwd=tmp_path)
    assert bad.stderr.strip().splitlines() == [
        "error: --jobs must be BASELINE[,BASELINE...]:SEEDS (e.g. lora,layerlens:0-9,12), got 'lora:x'"
    ]

    # The script as a user runs it, in a subprocess: what it writes and prints.
    analysed = paired_seeds_process("--analyse", str(log.parent), "--compare", "a,b", "--compare", "a,c", cwd=tmp_path)
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    text = (log.parent / "results.md").read_text()
    assert text == analysed.stdout.rstrip("\n") + "\n"
    assert text.startswith(
        "Task mrpc, model tiny: test/* on its 'dev' split, read once with the checkpoint chosen by "
        "val/acc on the selection split (holdout); mean ± sample std over the seeds each baseline "
        "finished. Source: JSONL log runs.jsonl."
    )
    assert "| a | 0–4 | 5 | 0.8100 ± 0.0158 | 0.8640 ± 0.0114 | 100 | 12.0 ± 1.6 |" in text
    assert "| c | 0–2, 7 | 4 |" in text
    p = wilcoxon(F1_DIFFERENCES).pvalue
    assert f"| test/f1 | {mean(F1_DIFFERENCES):.4f} ± {stdev(F1_DIFFERENCES):.4f} | 4 / 0 / 1 | {p:.3g} |" in text
    assert "not paired: a alone at seeds 3–4, c alone at seed 7." in text
    csv = pd.read_csv(log.parent / "results.csv")
    assert list(csv.columns) == [
        "baseline",
        "seed",
        "test/acc",
        "test/f1",
        "params/trainable",
        "time/train_s",
        "task",
        "model",
    ]
    assert list(csv["baseline"]) == ["a"] * 5 + ["b"] * 5 + ["c"] * 4  # b's first line was replaced by a later one
    unknown = paired_seeds("--analyse", str(log.parent), "--compare", "a,nope", cwd=tmp_path)
    assert unknown.stderr.strip().splitlines() == [
        "error: compare: no finished run of baseline 'nope' in JSONL log runs.jsonl (baselines: a, b, c)"
    ]


def test_a_variant_runs_its_baseline_with_its_own_overrides_under_its_own_name(tmp_path):
    import runpy

    from layerlens.settings import resolve_settings

    script = runpy.run_path(str(PAIRED_SEEDS))
    variants = script["parse_variants"](["fast=baseline=layerlens budget.train_time_pct=30"])
    runner = script["Runner"](tmp_path, tmp_path / "work", ["model=tiny"], 1, float("inf"), variants)
    command = runner.command("fast", 3)
    assert "baseline=fast" not in command and f"hydra.run.dir={tmp_path / 'work' / 'fast-s3'}" in command
    assert runner.command("lora", 3)[3] == "baseline=lora"
    overrides = [o for o in command[3:] if not o.startswith(("hydra.", "logger"))]
    s = resolve_settings(compose_config("run", overrides))
    assert (s.baseline.name, type(s.baseline).__name__, s.budget.train_time_pct, s.seed) == (
        "fast",
        "LayerLensBaseline",
        30,
        3,
    )
    with pytest.raises(SystemExit, match="--variant must be NAME=OVERRIDES naming its baseline"):
        script["parse_variants"](["fast=budget.train_time_pct=30"])


def test_time_shares_split_each_runs_wall_time_into_parts_that_add_up():
    import runpy

    shares = runpy.run_path(str(REPO / "experiments" / "time_shares.py"))["shares"]
    base = {"time/data_s": 1.0, "time/steps_s": 50.0, "time/checkpoint_s": 2.0, "time/train_s": 60.0}
    runs = pd.DataFrame(
        [
            {"baseline": "lora", **base, "time/validate_s": 10.0, "time/eval_s": 9.0, "time/wall_s": 100.0},
            {"baseline": "lora", **base, "time/validate_s": 20.0, "time/eval_s": 9.0, "time/wall_s": 100.0},
            {
                "baseline": "layerlens",
                **base,
                "time/calibrate_s": 5.0,
                "time/profile_s": 4.0,
                "time/plan_s": 1.0,
                "time/validate_s": 10.0,
                "time/eval_s": 8.0,
                "time/wall_s": 100.0,
            },
            {"baseline": "old", "time/train_s": 60.0, "time/wall_s": float("nan")},  # logged before time/wall_s
        ]
    )
    table = shares(runs)
    assert list(table.index) == ["layerlens", "lora"]
    lora, layerlens = table.loc["lora"], table.loc["layerlens"]
    assert (lora["runs"], lora["validation"], lora["batches, loop"], lora["steps"]) == (2, 15.0, 8.0, 50.0)
    assert lora["model, build, rest"] == pytest.approx(100 - 1 - 50 - 2 - 8 - 15 - 9)
    assert layerlens["calibrate, profile, plan"] == 10.0 and layerlens["model, build, rest"] == pytest.approx(11.0)
    parts = table.drop(columns=["runs", "wall s"])
    assert list(parts.sum(axis=1)) == pytest.approx([100.0, 100.0])


def test_at_least_as_good_reads_a_lower_perplexity_as_better():
    from layerlens.analysis.paired import MetricComparison, PairedComparison

    columns = pd.MultiIndex.from_product([["a", "b"], ["test/exact_match", "test/perplexity"]])
    # seeds 0 and 1: a's exact match higher and its perplexity lower (better in both); seed 2: its perplexity higher
    rows = [[0.5, 2.0, 0.4, 2.5], [0.5, 2.2, 0.4, 2.5], [0.5, 3.0, 0.4, 2.5]]
    values = pd.DataFrame(rows, index=["0", "1", "2"], columns=columns)
    metrics = tuple(
        MetricComparison(m, tuple(values[("a", m)] - values[("b", m)])) for m in ("test/exact_match", "test/perplexity")
    )
    pair = PairedComparison("sft", "tiny", "a", "b", ("0", "1", "2"), (), (), values, metrics)
    assert pair.at_or_above == 2
