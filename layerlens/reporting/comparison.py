"""The comparison table: per task, model and baseline, mean and std over seeds, ratios to a reference."""

import operator
from dataclasses import dataclass

import pandas as pd

from layerlens.errors import LayerLensError

SUMMARISED = {
    "val/acc": "acc",
    "val/f1": "f1",
    "params/trainable_pct": "trainable_pct",
    "time/train_s": "train_s",
}
RATIOS = ("acc", "f1", "trainable_pct", "train_s")
GROUP = ["task", "model", "baseline"]
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Target:
    name: str
    metric: str
    compare: str  # "ratio" (to the reference baseline) or "absolute"
    op: str
    value: float

    def __post_init__(self):
        if self.metric not in SUMMARISED:
            raise LayerLensError(f"target {self.name!r}: metric must be one of {', '.join(SUMMARISED)}, got {self.metric!r}")
        if self.compare not in ("ratio", "absolute"):
            raise LayerLensError(f"target {self.name!r}: compare must be 'ratio' or 'absolute', got {self.compare!r}")
        if self.op not in OPS:
            raise LayerLensError(f"target {self.name!r}: op must be one of {', '.join(OPS)}, got {self.op!r}")

    def column(self) -> str:
        short = SUMMARISED[self.metric]
        return f"{short}_ratio" if self.compare == "ratio" else f"{short}_mean"

    def verdict(self, row: pd.Series) -> str:
        value = row[self.column()]
        if pd.isna(value):
            return "n/a"
        return "met" if OPS[self.op](value, self.value) else "not met"


def summarise(runs: pd.DataFrame, targets: list[Target], reference: str = "full_ft") -> pd.DataFrame:
    """One row per (task, model, baseline): seeds, runs, mean/std of each metric, ratios, targets."""
    if runs.empty:
        raise LayerLensError("no finished LayerLens runs match: run some first, or check tracking_uri/sweep/task")
    for metric in SUMMARISED:
        if metric not in runs:
            runs = runs.assign(**{metric: float("nan")})
    grouped = runs.groupby(GROUP, sort=True)
    table = grouped.agg(
        n_runs=("run_id", "size"),
        seeds=("seed", lambda s: ",".join(sorted(set(s), key=_seed_order))),
        runs=("run_name", lambda s: " ".join(sorted(s))),
    )
    for metric, short in SUMMARISED.items():
        table[f"{short}_mean"] = grouped[metric].mean()
        table[f"{short}_std"] = grouped[metric].std(ddof=1)
    table = table.reset_index()
    means = [f"{short}_mean" for short in RATIOS]
    reference_means = table.loc[table["baseline"] == reference, ["task", "model", *means]]
    merged = table.merge(reference_means, on=["task", "model"], how="left", suffixes=("", "_ref"))
    for short in RATIOS:
        table[f"{short}_ratio"] = merged[f"{short}_mean"] / merged[f"{short}_mean_ref"]
    for target in targets:
        table[target.name] = table.apply(target.verdict, axis=1)
    return table


def _seed_order(seed: str):
    return (0, int(seed)) if str(seed).isdigit() else (1, str(seed))
