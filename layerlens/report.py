"""python -m layerlens.report: the comparison table (and its plots) of the runs in an MLflow store."""

import hydra

from layerlens.cli import main_guard, one_line_errors
from layerlens.paths import CONF_DIR
from layerlens.reporting.build import make_report


@hydra.main(config_path=str(CONF_DIR), config_name="report", version_base="1.3")
@one_line_errors
def main(cfg) -> None:
    files = make_report(cfg)
    print(f"written: {files.markdown} (plots {', '.join(map(str, files.plots))}) and {files.csv}")


if __name__ == "__main__":
    main_guard(main)
