"""The comparison table as Markdown, CSV and a terminal table, each saying where its numbers come from."""

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from layerlens.analysis.comparison import HEADLINE, SUMMARISED, Target
from layerlens.analysis.paired import PairedComparison
from layerlens.analysis.plots import Plot
from layerlens.analysis.runs import describe_source

LABELS = {
    "acc": "acc",
    "f1": "F1",
    "mcc": "MCC",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "trainable_pct": "trainable %",
    "train_s": "train s",
    "profile_s": "profile s",
    "total_s": "total s",
    HEADLINE: "headline",
}
DIGITS = {"trainable_pct": 3, "train_s": 1, "profile_s": 1, "total_s": 1}  # others: 4
ALWAYS_SHOWN = ("trainable_pct", "train_s")  # other metric columns only where some run logged them
SHOWN_RATIOS = (HEADLINE, "trainable_pct", "train_s", "total_s")


def provenance(source: str, sweep: str | None, reference: str) -> str:
    scope = f"sweep {sweep.replace('+', ' + sweep ')}" if sweep else "all finished runs"
    return (
        f"Source: {describe_source(source)}, {scope}. Task metrics (acc, F1, MCC; Pearson, Spearman): test/*, on "
        f"each run's test split (task.test_split, GLUE's dev), read once with the checkpoint chosen by the task's "
        f"headline metric on its selection split (task.selection_split: a held-out share of train unless set "
        f"otherwise); mean ± sample std over the n seeds of each row. Ratios: row mean / "
        f"{reference} mean for the same task and model, left empty where that is not one configuration (filter by "
        f"sweep). Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC."
    )


def _mean_std(row: pd.Series, short: str) -> str:
    mean, std = row[f"{short}_mean"], row[f"{short}_std"]
    if pd.isna(mean):
        return "–"
    digits = DIGITS.get(short, 4)
    return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def display_frame(table: pd.DataFrame, targets: list[Target]) -> pd.DataFrame:
    baseline = table["baseline"] + table["variant"].map(lambda v: f" ({v})" if v else "")
    shown = pd.DataFrame({"task": table["task"], "model": table["model"], "baseline": baseline})
    shown["n seeds"] = table["n_runs"].astype(str) + " (" + table["seeds"] + ")"
    shown[LABELS[HEADLINE]] = table[HEADLINE].str.removeprefix("val/")
    for short in SUMMARISED.values():
        if short in ALWAYS_SHOWN or table[f"{short}_mean"].notna().any():
            shown[LABELS.get(short, short)] = table.apply(_mean_std, axis=1, short=short)
    for short in SHOWN_RATIOS:
        shown[f"{LABELS[short]} / ref"] = table[f"{short}_ratio"].map(lambda v: "–" if pd.isna(v) else f"{v:.3f}")
    for target in targets:
        shown[target.name] = table[target.name]
    shown["runs"] = table["runs"]
    return shown


CHECKS_NOTE = (
    "Per run. grad/Fisher corr: Spearman correlation, over sites, of the utility from the even-numbered "
    "profiling batches with the gradient norm (Fisher trace) from the odd-numbered ones, with its p-value. "
    "consistency: share of same-method site pairs whose sizes are ordered like their utilities."
)


PAIRED_NOTE = (
    "Each pair within each task and model where both ran, on the seeds both finished (one run per seed, the "
    "latest); a − b per seed, its mean ± sample std, the seeds where a is higher / equal (within 1e-9) / lower, "
    "and Wilcoxon's signed-rank test of the differences, two-sided, ties left out."
)


def write_report(
    table: pd.DataFrame,
    targets: list[Target],
    header: str,
    out_dir: Path,
    stem: str,
    checks: pd.DataFrame | None = None,
    plots: list[Plot] | None = None,
    comparisons: Sequence[PairedComparison] = (),
) -> tuple[Path, Path]:
    """The Markdown (linking `plots`, written beside it; then each compared pair seed by seed) and the CSV of the
    table, in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, csv = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    shown = display_frame(table, targets)
    text = f"# LayerLens comparison\n\n{header}\n\n{shown.to_markdown(index=False)}\n"
    if plots:
        text += "\n## Plots\n" + "".join(f"\n![{p.title}]({p.path.name})\n\n{p.caption}\n" for p in plots)
    if checks is not None and not checks.empty:
        text += (
            f"\n## Profiling and plan checks\n\n{CHECKS_NOTE}\n\n{checks.to_markdown(index=False, floatfmt='.4g')}\n"
        )
        checks.to_csv(out_dir / f"{stem}-plan-checks.csv", index=False)
    if comparisons:
        text += f"\n## Seed by seed\n\n{PAIRED_NOTE}\n" + "".join(
            "\n" + "\n".join(c.markdown()) + "\n" for c in comparisons
        )
    markdown.write_text(text)
    table.to_csv(csv, index=False)
    return markdown, csv


def _rich_table(frame: pd.DataFrame, title: str, caption: str) -> Table:
    table = Table(title=title, caption=caption, caption_justify="left")
    for column in frame.columns:
        table.add_column(column, overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    return table


def print_report(
    table: pd.DataFrame,
    targets: list[Target],
    header: str,
    console: Console | None = None,
    checks: pd.DataFrame | None = None,
    comparisons: Sequence[PairedComparison] = (),
    source: str = "",
) -> None:
    console = console or Console(width=250)
    console.print(_rich_table(display_frame(table, targets), "LayerLens comparison", header))
    if checks is not None and not checks.empty:
        console.print(_rich_table(checks, "Profiling and plan checks", CHECKS_NOTE))
    for c in comparisons:
        caption = f"{c.scope()}. Source: {source}."
        if not c.seeds:
            console.print(f"{c.a} against {c.b}: no seed paired ({caption})")
            continue
        console.print(_rich_table(c.seed_frame(), f"{c.a} against {c.b}, seed by seed", caption))
        console.print(
            _rich_table(
                c.stats_frame(),
                f"{c.a} − {c.b}, paired",
                f"{caption} {PAIRED_NOTE} {c.a} at "
                f"or above {c.b} in every metric at {c.at_or_above} of {len(c.seeds)} seeds.",
            )
        )
