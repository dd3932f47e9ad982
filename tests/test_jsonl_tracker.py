"""logger=jsonl: one JSON line per run without an MLflow store; and the paired-seeds benchmark that reads those lines."""

import importlib.util
import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from scipy.stats import wilcoxon

from layerlens.errors import LayerLensError
from layerlens.pipeline import run_experiment
from layerlens.settings import resolve_settings
from layerlens.tracking import JsonlTracker
from tests.conftest import REPO, TINY, compose_config


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_appends_one_finished_line_with_its_final_metrics_tags_and_config(tmp_path):
    path = tmp_path / "runs.jsonl"
    for seed in (0, 1):
        cfg = compose_config("run", [*TINY, "baseline=layerlens", "logger=jsonl", f"logger.path={path}",
                                     f"seed={seed}", "baseline.profile.num_batches=4"])
        headline = run_experiment(cfg, tmp_path / f"s{seed}", sweep="sw")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["run_name"] for r in records] == ["layerlens-mrpc-s0", "layerlens-mrpc-s1"]
    last = records[-1]
    assert last["status"] == "FINISHED" and last["error"] is None
    assert last["metrics"]["val/acc"] == pytest.approx(headline)
    assert last["metrics"]["params/trainable"] > 0 and "time/profile_s" in last["metrics"]
    assert (last["tags"]["baseline"], last["tags"]["seed"], last["tags"]["sweep"]) == ("layerlens", "1", "sw")
    assert last["tags"]["checkpoint"].endswith(".ckpt")
    assert last["config"]["seed"] == 1 and last["config"]["logger"]["path"] == str(path)


def test_a_failed_run_is_recorded_failed_with_its_error_and_the_error_goes_on(tmp_path):
    path = tmp_path / "runs.jsonl"
    tracker = resolve_settings(compose_config("run", ["logger=jsonl", f"logger.path={path}"])).tracker
    with pytest.raises(LayerLensError, match="broke"):
        with tracker.start_run("r", {"baseline": "lora"}, compose_config("run")) as run:
            run.log_metrics({"profile/utility_cv": 0.5})
            raise LayerLensError("broke\nsecond line")
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (record["status"], record["error"], record["metrics"]) == ("FAILED", "broke", {"profile/utility_cv": 0.5})


@pytest.mark.parametrize("path", ["", "  ", None])
def test_an_empty_path_is_refused_naming_the_field(path):
    with pytest.raises(LayerLensError, match="logger.path must be a non-empty string"):
        JsonlTracker(path)


def test_the_pipeline_runs_without_importing_mlflow():
    code = "import sys, layerlens.pipeline, layerlens.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_paired_seeds_orders_jobs_seed_by_seed():
    paired = load_script("paired_seeds")
    assert paired.parse_jobs("lora,layerlens:0-1,5") == [
        ("lora", 0), ("layerlens", 0), ("lora", 1), ("layerlens", 1), ("lora", 5), ("layerlens", 5)]
    with pytest.raises(SystemExit, match="--jobs must be"):
        paired.parse_jobs("lora")


def test_paired_seeds_tables_finished_runs_and_tests_the_differences(tmp_path):
    paired = load_script("paired_seeds")
    task = OmegaConf.to_container(compose_config("run").task)
    scores = {  # seed: (a acc, a f1, b acc, b f1)
        0: (0.80, 0.86, 0.78, 0.85), 1: (0.82, 0.87, 0.80, 0.86), 2: (0.79, 0.85, 0.80, 0.86),
        3: (0.81, 0.86, 0.81, 0.85), 4: (0.83, 0.88, 0.79, 0.84),
    }

    def line(baseline, seed, acc, f1, status="FINISHED"):
        return json.dumps({"status": status, "tags": {"baseline": baseline, "seed": str(seed)},
                           "config": {"task": task},
                           "metrics": {"val/acc": acc, "val/f1": f1, "params/trainable": 10, "time/train_s": 1.0}})

    lines = [line(b, s, *v[i:i + 2]) for s, v in scores.items() for b, i in (("a", 0), ("b", 2))]
    lines += [line("a", 5, 0.99, 0.99, status="KILLED"), line("b", 5, 0.5, 0.5)]
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    text = paired.analyse(tmp_path, [("a", "b")], ["val/acc", "val/f1"])

    assert "| a | 0–4 | 5 | 0.8100 ± 0.0158 | 0.8640 ± 0.0114 |" in text  # the KILLED run left out
    assert "| b | 0–5 | 6 |" in text
    acc_diffs = [v[0] - v[2] for v in scores.values()]
    f1_diffs = [v[1] - v[3] for v in scores.values()]
    assert f"| val/acc | 0.0140 ± 0.0195 | 3 / 1 / 1 | {wilcoxon(acc_diffs).pvalue:.3g} |" in text
    assert f"| val/f1 | 0.0120 ± 0.0179 | 4 / 0 / 1 | {wilcoxon(f1_diffs).pvalue:.3g} |" in text
    assert "a at or above b in every metric at 4 of 5 seeds." in text  # all but seed 2; seed 3 ties in acc
    assert (tmp_path / "results.csv").read_text().count("\n") == 1 + 5 + 6
