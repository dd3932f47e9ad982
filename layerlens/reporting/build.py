"""From a report config to the written and printed comparison."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from layerlens.errors import LayerLensError
from layerlens.reporting.comparison import Target, plan_checks, summarise
from layerlens.reporting.render import print_report, provenance, write_report
from layerlens.reporting.runs import finished_runs


def make_report(cfg: DictConfig) -> tuple[Path, Path]:
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
    return write_report(table, targets, header, Path(cfg.out_dir), stem, checks)
