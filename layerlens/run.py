"""python -m layerlens.run [group=option ...]: train and evaluate one configuration (or a sweep with -m)."""

import logging
import math

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from layerlens.cli import main_guard, one_line_errors, output_dir, sweep_id
from layerlens.data.tasks import NO_SELECTION
from layerlens.errors import LayerLensError
from layerlens.paths import CONF_DIR
from layerlens.pipeline import run_experiment

log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """A trial of a search failed: its sweeper records it FAIL and the search goes on (conf/hparams_search/)."""


def searching() -> bool:
    """Whether this run is a trial of a sweeper that scores runs by their return value (optuna), rather than a run
    of Hydra's basic sweeper, which stops the whole sweep at its first failed run."""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.runtime.choices.get("hydra/sweeper") != "basic"


@hydra.main(config_path=str(CONF_DIR), config_name="run", version_base="1.3")
@one_line_errors
def main(cfg) -> float:
    """The run's headline metric (task.headline_metric), a float: what a search maximises."""
    if not searching():
        return run_experiment(cfg, output_dir(), sweep_id())
    if cfg.task.get("selection_split") == NO_SELECTION:
        raise LayerLensError(
            "task.selection_split: a search chooses on the selection split; with none it would "
            "choose on the test split (set holdout or a split name)"
        )
    try:
        metric = run_experiment(cfg, output_dir(), sweep_id())
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
