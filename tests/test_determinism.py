"""The same seed and config give a byte-identical plan and identical CPU metrics; another seed does not."""

import pytest
from mlflow.tracking import MlflowClient

from layerlens.pipeline import run_experiment
from tests.conftest import TINY, run_module

# Wall-clock and memory measurements vary from run to run; every other metric must not.
UNTIMED = ("time/", "mem/", "throughput/")


def plan_cli(run, tmp_path, name, *overrides):
    """`python -m layerlens.plan` on the tiny model with its own output dir: (stdout, the plan.json written)."""
    out = tmp_path / name
    done = run("plan", *TINY, f"hydra.run.dir={out}", *overrides, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, (out / "plan.json").read_bytes()


def test_the_plan_cli_prints_and_writes_a_byte_identical_plan_for_the_same_seed(tmp_path, call_module):
    # The first in a subprocess (the plan entry point as a user runs it), the others in this process: the plan
    # depends on the seed and the config alone, not on the process or on what ran in it before.
    (stdout_a, file_a), (stdout_b, file_b), (stdout_1, file_1) = (
        plan_cli(run_module, tmp_path, "a"),
        plan_cli(call_module, tmp_path, "b"),
        plan_cli(call_module, tmp_path, "seed1", "seed=1"),
    )
    assert stdout_a.startswith("{") and stdout_a == stdout_b
    assert file_a == file_b
    assert stdout_a.strip() == file_a.decode().strip()
    # Another seed initialises the backbone differently, so the profile and the plan's utilities change.
    assert stdout_1 != stdout_a and file_1 != file_a


def metrics_and_histories(client, run):
    """The run's final metrics and every metric's full history, without the timings."""
    keys = sorted(k for k in run.data.metrics if not k.startswith(UNTIMED))
    final = {k: run.data.metrics[k] for k in keys}
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in keys}
    return final, history


@pytest.mark.parametrize("baseline", ["layerlens", "lora"])
def test_the_same_seed_gives_identical_metrics_and_another_seed_does_not(compose_run, tracking_uri, tmp_path, baseline):
    for name, seed in [("first", 0), ("second", 0), ("other", 1)]:
        run_experiment(compose_run(f"baseline={baseline}", f"seed={seed}"), tmp_path / name)
    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["attributes.start_time ASC"]
    )
    assert [r.info.run_name for r in runs] == [f"{baseline}-mrpc-s0", f"{baseline}-mrpc-s0", f"{baseline}-mrpc-s1"]
    first, second, other = (metrics_and_histories(client, run) for run in runs)
    final = first[0]
    assert {"val/acc", "val/f1", "val/loss", "params/trainable", "params/backbone"} <= final.keys()
    assert first == second  # exact equality of every value, final and per step
    assert any(other[0][k] != v for k, v in final.items() if k.startswith("val/"))
    if baseline == "lora":  # the same adapters whatever the seed
        assert all(other[0][k] == v for k, v in final.items() if k.startswith("params/"))
    else:
        assert (tmp_path / "first" / "plan.json").read_bytes() == (tmp_path / "second" / "plan.json").read_bytes()
        assert (tmp_path / "other" / "plan.json").read_bytes() != (tmp_path / "first" / "plan.json").read_bytes()
