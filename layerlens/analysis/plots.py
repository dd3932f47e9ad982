"""The comparison table as pictures: headline metric against trainable share and against total time, and time per
baseline."""

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no backend state, Agg renders the PNG

from layerlens.data.kinds import on_test

PANELS = ["task", "model"]  # one panel per task and model
SAVE: dict[str, Any] = {"dpi": 110, "bbox_inches": "tight"}  # "tight": the caption below the axes is kept


@dataclass
class Plot:
    path: Path
    title: str
    caption: str  # what is drawn and where the numbers come from


def pareto_front(cost, score) -> np.ndarray:
    """Which points no other point beats: none has cost <= and score >= with at least one of them strictly."""
    cost, score = np.asarray(cost, dtype=float), np.asarray(score, dtype=float)
    beaten = [((cost <= c) & (score >= s) & ((cost < c) | (score > s))).any() for c, s in zip(cost, score)]
    return ~np.array(beaten, dtype=bool)


def write_plots(table: pd.DataFrame, out_dir: Path, stem: str, scope: str, source: str) -> list[Plot]:
    """`{stem}-pareto.png`, `{stem}-time.png` and `{stem}-time-pareto.png` in out_dir, from the summary table's rows.

    `scope` names the runs (e.g. "sweep <id>"), `source` the store they were read from.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = table["n_runs"]
    seeds_text = (
        f"{seeds.min()} seed{'s' if seeds.max() > 1 else ''}"
        if seeds.min() == seeds.max()
        else f"{seeds.min()}-{seeds.max()} seeds"
    )
    setting = f"{scope}; {seeds_text} per point; mean ± sample std over seeds (no bar with one seed)"
    pareto = Plot(
        out_dir / f"{stem}-pareto.png",
        "headline metric vs trainable %",
        f"Each task's headline metric on the test split (task.headline_metric, read as test/*: the score of the "
        f"checkpoint chosen on the selection split) against "
        f"the trainable share of the backbone (params/trainable_pct, log scale), per baseline; {setting}. Ringed "
        f"and joined: the Pareto front, the rows that no other row beats with fewer trainable parameters and at "
        f"least as high a score. Source: {source}.",
    )
    time = Plot(
        out_dir / f"{stem}-time.png",
        "train time per baseline",
        f"Training time (time/train_s: Trainer.fit wall time less its between-epoch validation) per baseline, with "
        f"layerlens's profiling before training (time/profile_s) stacked on top where logged; {setting}. "
        f"Source: {source}.",
    )
    time_pareto = Plot(
        out_dir / f"{stem}-time-pareto.png",
        "headline metric vs total time",
        f"Each task's headline metric on the test split against each baseline's total time (time/total_s: "
        f"calibrating, profiling and planning where a baseline does them, and training) as a share of the "
        f"reference baseline's, full fine-tuning's by default, whose total is its training time; {setting}. "
        f"Ringed and joined: the Pareto front, the rows that no other row beats in less time with at least as "
        f"high a score. Rows without a total time or a reference are left out. Source: {source}.",
    )
    pareto_figure(table, f"Headline metric vs trainable % — {setting}", pareto.caption).savefig(pareto.path, **SAVE)
    time_figure(table, f"Train time per baseline — {setting}", time.caption).savefig(time.path, **SAVE)
    time_pareto_figure(table, f"Headline metric vs total time — {setting}", time_pareto.caption).savefig(
        time_pareto.path, **SAVE
    )
    return [pareto, time, time_pareto]


def pareto_figure(table: pd.DataFrame, title: str, caption: str) -> Figure:
    return _figure(_pareto_panel, table, title, caption)


def time_figure(table: pd.DataFrame, title: str, caption: str) -> Figure:
    return _figure(_time_panel, table, title, caption)


def time_pareto_figure(table: pd.DataFrame, title: str, caption: str) -> Figure:
    return _figure(_time_pareto_panel, table, title, caption)


def _figure(panel, table: pd.DataFrame, title: str, caption: str) -> Figure:
    groups = list(table.groupby(PANELS, sort=True))
    width = 6.5 * len(groups)  # inches
    fig = Figure(figsize=(width, 5.5), layout="constrained")
    for ax, ((task, model), rows) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups):
        ax.set_title(f"task {task} · model {model}", fontsize=10)
        panel(ax, rows)
    # About 13 characters an inch at 10 pt, 18 at 7 pt.
    fig.suptitle(textwrap.fill(title, width=int(13 * width)), fontsize=10)
    fig.text(0, 0, textwrap.fill(caption, width=int(18 * width)), fontsize=7, va="top", ha="left")
    return fig


def _label(row: pd.Series) -> str:
    return row["baseline"] + (f" ({row['variant']})" if row["variant"] else "")


def _pareto_panel(ax, rows: pd.DataFrame) -> None:
    rows = rows.dropna(subset=["headline_mean", "trainable_pct_mean"])
    _front_panel(ax, rows, rows["trainable_pct_mean"], rows["trainable_pct_std"], "a trainable %")
    ax.set_xscale("log")
    ax.set_xlabel("trainable % of the backbone (params/trainable_pct, log scale)")


def _time_pareto_panel(ax, rows: pd.DataFrame) -> None:
    rows = rows.dropna(subset=["headline_mean", "total_s_ratio"])
    share = 100 * rows["total_s_ratio"]
    _front_panel(ax, rows, share, share * rows["total_s_std"] / rows["total_s_mean"], "a total time and a reference")
    ax.set_xlabel("total time (time/total_s), % of the reference's")


def _front_panel(ax, rows: pd.DataFrame, cost: pd.Series, cost_std: pd.Series, wanted: str) -> None:
    """Each row's headline metric against its cost, with error bars, and the Pareto front ringed and joined."""
    if rows.empty:
        ax.text(0.5, 0.5, f"no row with both a headline metric and {wanted}", ha="center", transform=ax.transAxes)
        return
    for (_, row), x, xerr in zip(rows.iterrows(), cost, cost_std):
        ax.errorbar(x, row["headline_mean"], xerr=xerr, yerr=row["headline_std"], fmt="o", capsize=3, label=_label(row))
    on_front = pareto_front(cost, rows["headline_mean"])
    order = np.argsort(cost.to_numpy()[on_front])
    front_cost, front_score = cost.to_numpy()[on_front][order], rows["headline_mean"].to_numpy()[on_front][order]
    ax.step(front_cost, front_score, where="post", linestyle="--", color="grey", label="Pareto front")
    ax.scatter(front_cost, front_score, s=220, facecolors="none", edgecolors="black")
    ax.set_ylabel(f"{', '.join(sorted({on_test(h) for h in rows['headline']}))} (mean ± std over seeds)")
    ax.legend(fontsize=7)


def _time_panel(ax, rows: pd.DataFrame) -> None:
    rows = rows.dropna(subset=["train_s_mean"])
    if rows.empty:
        ax.text(0.5, 0.5, "no row with a train time", ha="center", transform=ax.transAxes)
        return
    x = np.arange(len(rows))
    train = rows["train_s_mean"].to_numpy()
    ax.bar(x, train, yerr=rows["train_s_std"], capsize=3, color="tab:blue", label="training (time/train_s)")
    profiled = rows["profile_s_mean"].notna().to_numpy()
    if profiled.any():
        ax.bar(
            x[profiled],
            rows["profile_s_mean"][profiled],
            bottom=train[profiled],
            yerr=rows["profile_s_std"][profiled],
            capsize=3,
            color="tab:orange",
            label="profiling (time/profile_s)",
        )
    ax.set_xticks(x, [_label(row) for _, row in rows.iterrows()], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("seconds (mean ± std over seeds)")
    ax.legend(fontsize=7)
