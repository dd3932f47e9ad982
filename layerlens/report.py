"""python -m layerlens.report: the comparison table (and its plots) of the runs in an MLflow store or a JSONL log;
with compare=a,b, the two baselines seed by seed."""

import sys

import hydra

from layerlens.analysis.assemble import make_report
from layerlens.cli import main_guard, one_line_errors
from layerlens.paths import CONF_DIR


@hydra.main(config_path=str(CONF_DIR), config_name="report", version_base="1.3")
@one_line_errors
def main(cfg) -> None:
    files = make_report(cfg)
    paired = f"; paired: {', '.join(map(str, files.paired))}" if files.paired else ""
    print(f"written: {files.markdown} (plots {', '.join(map(str, files.plots))}) and {files.csv}{paired}")


def compare_overrides(argv: list[str]) -> list[str]:
    """`compare=a,b` passed to Hydra as one quoted value (unquoted, Hydra reads a,b as a sweep); given more than
    once, as the list of those pairs. A value in brackets or quotes is Hydra's already."""
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("compare=")]
    if not values:
        return argv
    quoted = [value if value.startswith(("[", "'", '"')) or value == "null" else f"'{value}'" for value in values]
    rest = [arg for arg in argv if not arg.startswith("compare=")]
    return [*rest, f"compare={quoted[0]}" if len(quoted) == 1 else f"compare=[{','.join(quoted)}]"]


if __name__ == "__main__":
    sys.argv[1:] = compare_overrides(sys.argv[1:])
    main_guard(main)
