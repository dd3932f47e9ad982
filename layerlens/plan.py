"""python -m layerlens.plan [group=option ...]: profile and plan without training; the plan as JSON on stdout."""

import logging

import hydra

from layerlens.cli import main_guard, one_line_errors, output_dir
from layerlens.paths import CONF_DIR
from layerlens.pipeline import plan_experiment

log = logging.getLogger(__name__)


@hydra.main(config_path=str(CONF_DIR), config_name="plan", version_base="1.3")
@one_line_errors
def main(cfg) -> None:
    plan, record = plan_experiment(cfg, output_dir())
    log.info(
        "plan and its plot written to %s; its checks: %s",
        output_dir(),
        ", ".join(f"{k} {v:.4g}" for k, v in record.items()),
    )
    print(plan.to_json())


if __name__ == "__main__":
    main_guard(main)
