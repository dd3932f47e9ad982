"""From a report config to the written and printed comparison."""

from pathlib import Path
from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf

from layerlens.errors import LayerLensError
from layerlens.reporting.comparison import Target, plan_checks, summarise
from layerlens.reporting.plots import write_plots
from layerlens.reporting.render import print_report, provenance, write_report
from layerlens.reporting.runs import finished_runs


class ReportFiles(NamedTuple):
    markdown: Path
    csv: Path
    plots: list[Path]


def make_report(cfg: DictConfig) -> ReportFiles:
    try:
        targets = [Target(**check) for check in OmegaConf.to_container(cfg.targets.checks, resolve=True)]
    except TypeError as err:
        raise LayerLensError(f"targets.checks: {err}") from None
    runs = finished_runs(cfg.tracking_uri, sweep=cfg.sweep, task=cfg.task_name)
    table = summarise(runs, targets, reference=cfg.targets.reference)
    sweep = "+".join(sorted(runs["sweep"].unique())) if cfg.sweep else None
    header = provenance(cfg.tracking_uri, sweep, cfg.targets.reference)
    stem = f"comparison-{sweep or 'all'}" + (f"-{cfg.task_name}" if cfg.task_name else "")
    checks = plan_checks(runs)
    print_report(table, targets, header, checks=checks)
    out_dir = Path(cfg.out_dir)
    scope = f"sweep {sweep.replace('+', ' + ')}" if sweep else "all finished runs"
    plots = write_plots(table, out_dir, stem, scope, source=f"MLflow store {cfg.tracking_uri}")
    markdown, csv = write_report(table, targets, header, out_dir, stem, checks, plots)
    return ReportFiles(markdown, csv, [plot.path for plot in plots])
