"""python -m layerlens.export run_id=<id> out=<folder> (or run_dir=<the run's output folder>) [merge=true]: a finished
run's best checkpoint as a folder that layerlens.load reads (and peft, for a LoRA-only model)."""

import hydra
from omegaconf import OmegaConf

from layerlens.cli import main_guard, one_line_errors
from layerlens.errors import LayerLensError
from layerlens.exporting import export_run, run_from_folder, run_from_store
from layerlens.paths import CONF_DIR

USAGE = "python -m layerlens.export run_id=<mlflow run id> (or run_dir=<the run's output folder>) out=<folder>"


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
@one_line_errors
def main(cfg) -> None:
    if OmegaConf.is_missing(cfg, "out"):
        raise LayerLensError(f"out is required: {USAGE}")
    if (cfg.run_id is None) == (cfg.run_dir is None):
        raise LayerLensError(f"give one of run_id and run_dir: {USAGE}")
    run = run_from_store(cfg.tracking_uri, cfg.run_id) if cfg.run_id is not None else run_from_folder(cfg.run_dir)
    out = export_run(run, cfg.out, merge=cfg.merge)
    print(f"exported {run.checkpoint} to {out}")


if __name__ == "__main__":
    main_guard(main)
