"""From a report config to the written and printed comparison."""

from pathlib import Path
from typing import NamedTuple, cast

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from layerlens.analysis.comparison import Target, plan_checks, summarise
from layerlens.analysis.paired import PairedComparison, check_metrics, compare_pairs, parse_pairs
from layerlens.analysis.plots import write_plots
from layerlens.analysis.render import print_report, provenance, write_report
from layerlens.analysis.runs import describe_source, finished_runs
from layerlens.errors import LayerLensError


class ReportFiles(NamedTuple):
    markdown: Path
    csv: Path
    plots: list[Path]
    # With compare: <stem>-paired.csv (per pair and metric) and <stem>-paired-seeds.csv (per pair, seed and metric).
    paired: tuple[Path, ...] = ()


def make_report(cfg: DictConfig) -> ReportFiles:
    try:
        targets = [Target(**check) for check in cast(list, OmegaConf.to_container(cfg.targets.checks, resolve=True))]
    except TypeError as err:
        raise LayerLensError(f"targets.checks: {err}") from None
    pairs = parse_pairs(_plain(cfg.compare))
    metrics = _plain(cfg.metrics)
    metrics = [metrics] if isinstance(metrics, str) else metrics
    check_metrics(metrics)
    source = str(cfg.source)
    runs = finished_runs(source, sweep=cfg.sweep, task=cfg.task_name)
    table = summarise(runs, targets, reference=cfg.targets.reference)
    comparisons = compare_pairs(runs, pairs, metrics, describe_source(source))
    sweep = "+".join(sorted(runs["sweep"].unique())) if cfg.sweep else None
    header = provenance(source, sweep, cfg.targets.reference)
    stem = f"comparison-{sweep or 'all'}" + (f"-{cfg.task_name}" if cfg.task_name else "")
    checks = plan_checks(runs)
    print_report(table, targets, header, checks=checks, comparisons=comparisons, source=describe_source(source))
    out_dir = Path(cfg.out_dir)
    scope = f"sweep {sweep.replace('+', ' + ')}" if sweep else "all finished runs"
    plots = write_plots(table, out_dir, stem, scope, source=describe_source(source))
    markdown, csv = write_report(table, targets, header, out_dir, stem, checks, plots, comparisons)
    return ReportFiles(markdown, csv, [plot.path for plot in plots], write_paired(comparisons, out_dir, stem))


def write_paired(comparisons: list[PairedComparison], out_dir: Path, stem: str) -> tuple[Path, ...]:
    """<stem>-paired.csv, one row per pair and metric (seeds, mean and sample std of a − b, wins, ties, losses,
    Wilcoxon p), and <stem>-paired-seeds.csv, one row per pair, seed and metric (a's value, b's, a − b)."""
    if not comparisons:
        return ()
    stats, seeds = out_dir / f"{stem}-paired.csv", out_dir / f"{stem}-paired-seeds.csv"
    pd.DataFrame([row for c in comparisons for row in c.stats_rows()]).to_csv(stats, index=False)
    seeds_frame = pd.DataFrame(
        [
            {
                "task": c.task,
                "model": c.model,
                "a": c.a,
                "b": c.b,
                "seed": seed,
                "metric": m.metric,
                "a_value": c.values.loc[seed, (c.a, m.metric)],
                "b_value": c.values.loc[seed, (c.b, m.metric)],
                "difference": difference,
            }
            for c in comparisons
            for m in c.metrics
            for seed, difference in zip(c.seeds, m.differences)
        ],
        columns=["task", "model", "a", "b", "seed", "metric", "a_value", "b_value", "difference"],
    )
    seeds_frame.to_csv(seeds, index=False)
    return stats, seeds


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
