"""python -m layerlens.predict model=<export folder> file=<tsv or jsonl> out=<file>: the exported model's predictions
for every row of the file, one JSON line each, in order."""

import hydra
from omegaconf import OmegaConf

from layerlens.cli import main_guard, one_line_errors
from layerlens.errors import LayerLensError
from layerlens.paths import CONF_DIR
from layerlens.predicting import predict_file


@hydra.main(config_path=str(CONF_DIR / "predict"), config_name="predict", version_base="1.3")
@one_line_errors
def main(cfg) -> None:
    for field in ("model", "file", "out"):
        if OmegaConf.is_missing(cfg, field):
            raise LayerLensError(
                f"{field} is required: python -m layerlens.predict model=<export folder> file=<tsv or jsonl> out=<file>"
            )
    rows = predict_file(cfg.model, cfg.file, cfg.out, cfg.batch_size)
    print(f"{rows} predictions of {cfg.model} for {cfg.file} written to {cfg.out}")


if __name__ == "__main__":
    main_guard(main, groups=False)
