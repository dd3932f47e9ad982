"""python -m layerlens.run [group=option ...]: train and evaluate one configuration (or a sweep with -m)."""

import logging
import math

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from layerlens.cli import main_guard, one_line_errors, output_dir, sweep_id, sweep_stop_file
from layerlens.data.sft import HEADLINES
from layerlens.data.tasks import NO_SELECTION
from layerlens.errors import LayerLensError
from layerlens.paths import CONF_DIR
from layerlens.pipeline import run_experiment
from layerlens.training.resume import Interrupted, request_sweep_stop, sweep_stop_requested

log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """A trial of a search failed: its sweeper records it FAIL and the search goes on (conf/hparams_search/)."""


def searching() -> bool:
    """Whether this run is a trial of a sweeper that scores runs by their return value (optuna), rather than a run
    of Hydra's basic sweeper, which stops the whole sweep at its first failed run."""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.runtime.choices.get("hydra/sweeper") != "basic"


def run_in_sweep(cfg) -> float:
    """run_experiment as one run of a sweep: not started where the sweep was asked to stop (cli.SweepStop), ended
    early where it is asked while the run is going or where the run itself receives the signal (the whole sweep is
    then asked): the run is KILLED, with a checkpoint where it had begun training, and the sweep goes on to its end,
    where the process that launched it reports the stop."""
    stop_file = sweep_stop_file()
    assert stop_file is not None  # a sweep's
    if sweep_stop_requested(stop_file) is not None:
        log.warning("not started: the sweep was interrupted")
        return math.nan
    try:
        return run_experiment(cfg, output_dir(), sweep_id(), stop_file)
    except Interrupted as err:
        if sweep_stop_requested(stop_file) is None:
            request_sweep_stop(stop_file, err.signum)
        log.warning("interrupted: %s", err)
        return math.nan


@hydra.main(config_path=str(CONF_DIR), config_name="run", version_base="1.3")
@one_line_errors
def main(cfg) -> float:
    """The run's headline metric (task.headline_metric), a float: what a search maximises."""
    if not searching():
        return run_in_sweep(cfg) if sweep_id() else run_experiment(cfg, output_dir())
    if cfg.task.get("selection_split") == NO_SELECTION:
        raise LayerLensError(
            "task.selection_split: a search chooses on the selection split; with none it would "
            "choose on the test split (set holdout or a split name)"
        )
    headline, direction = cfg.task.get("headline_metric"), HydraConfig.get().sweeper.get("direction")
    if HEADLINES.get(headline) == "min" and direction != "minimize":
        raise LayerLensError(
            f"task.headline_metric: {headline} is the lower the better and the search would maximise it (set "
            "hydra.sweeper.direction=minimize, or task.headline_metric=val/exact_match)"
        )
    try:
        metric = run_in_sweep(cfg)
    except LayerLensError as err:  # one_line_errors would end the whole search
        raise TrialFailed(str(err)) from None
    except Exception:  # the sweeper logs only the message: keep the traceback in the trial's log
        log.exception("trial failed")
        raise
    if not math.isfinite(metric):  # optuna cannot record a nan value as a failure: it would end the search
        raise TrialFailed(f"the headline metric is {metric}")
    return metric


if __name__ == "__main__":
    main_guard(main)
