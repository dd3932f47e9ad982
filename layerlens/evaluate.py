"""python -m layerlens.evaluate run_id=<id> file=<tsv>: a finished run's checkpoint on any GLUE-format TSV."""

import hydra
from omegaconf import OmegaConf

from layerlens.cli import main_guard, one_line_errors
from layerlens.errors import LayerLensError
from layerlens.paths import CONF_DIR
from layerlens.training.checkpoint_eval import evaluate_run


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg) -> None:
    for field in ("run_id", "file"):
        if OmegaConf.is_missing(cfg, field):
            raise LayerLensError(f"{field} is required: python -m layerlens.evaluate run_id=<mlflow run id> file=<tsv>")
    metrics = evaluate_run(cfg.tracking_uri, cfg.run_id, cfg.file, cfg.batch_size)
    shown = ", ".join(
        f"{name} = {value:.4f}" if not name.endswith("n_rows") else f"{name} = {value:.0f}"
        for name, value in metrics.items()
    )
    print(f"run {cfg.run_id}, best checkpoint on {cfg.file}: {shown} (logged to the run)")


if __name__ == "__main__":
    main_guard(main)
