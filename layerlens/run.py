"""python -m layerlens.run [group=option ...]: train and evaluate one configuration (or a sweep with -m)."""

import hydra

from layerlens.cli import main_guard, one_line_errors, output_dir, sweep_id
from layerlens.paths import CONF_DIR
from layerlens.pipeline import run_experiment


@hydra.main(config_path=str(CONF_DIR), config_name="run", version_base="1.3")
@one_line_errors
def main(cfg) -> float:
    return run_experiment(cfg, output_dir(), sweep_id())


if __name__ == "__main__":
    main_guard(main)
