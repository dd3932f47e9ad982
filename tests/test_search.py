"""conf/hparams_search/: an Optuna search from the command line tries different learning rates, goes on past a
failing trial and writes the best trial's params and value to the sweep folder."""

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
from mlflow.tracking import MlflowClient
from optuna.distributions import LogUniformDistribution, UniformDistribution

from layerlens.paths import CONF_DIR
from tests.conftest import TINY, compose_config, copy_store


def test_search_maximises_over_a_log_scale_lr_and_the_budget():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        sweeper = compose("run", ["hparams_search=lr_budget"], return_hydra_config=True).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    parser = OverridesParser.create()
    space = {
        key: create_optuna_distribution_from_override(parser.parse_override(f"{key}={value}"))
        for key, value in sweeper.params.items()
    }
    assert set(space) == {"baseline.lr", "budget.params_pct"}
    assert isinstance(space["baseline.lr"], LogUniformDistribution)
    assert isinstance(space["budget.params_pct"], UniformDistribution) and space["budget.params_pct"].low > 0


def test_search_runs_trials_with_different_lrs_past_a_failing_one_and_names_the_best(
    tmp_path, call_module, store_template
):
    uri = copy_store(store_template, tmp_path / "mlflow.db")
    result = call_module(
        "run",
        "-m",
        "hparams_search=lr_budget",
        *TINY,
        "hydra.sweeper.n_trials=3",
        # budget.params_pct=200 fails validation; with seed 3, TPE's random start draws 0.5, 200, 0.5.
        "budget.params_pct=choice(0.5,200)",
        "seed=3",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Failed experiment: budget.params_pct must be in (0, 100]" in output

    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["sweep"] for r in runs} == {sweep_dir.name}
    assert {r.data.params["budget.params_pct"] for r in runs} == {"0.5"}
    lrs = {float(r.data.params["baseline.lr"]) for r in runs}
    assert len(lrs) == 2 and all(1e-4 <= lr <= 1e-2 for lr in lrs)

    headline = compose_config("run", TINY).task.headline_metric
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best_value = max(r.data.metrics[headline] for r in runs)
    assert results["best_value"] == best_value
    assert results["best_params"]["budget.params_pct"] == 0.5
    assert results["best_params"]["baseline.lr"] in {
        float(r.data.params["baseline.lr"]) for r in runs if r.data.metrics[headline] == best_value
    }
