"""The comparison table: per task, model and baseline, mean and std over seeds, ratios to a reference."""

import operator
from dataclasses import dataclass

import pandas as pd

from layerlens.data.kinds import TASK_KINDS, on_test
from layerlens.data.sft import REPORTED as SFT_METRICS
from layerlens.data.tasks import DEFAULT_HEADLINE
from layerlens.errors import LayerLensError
from layerlens.methods import METHODS

# Every test-split metric of every task kind (a run logs those of its own kind), then cost. The selection split's
# val/* chose each run's checkpoint, so they are not what a comparison reports.
SUMMARISED = {
    **{f"test/{name}": name for kind in TASK_KINDS.values() for name in kind.metrics},
    **{f"test/{name}": name for name in SFT_METRICS},
    "params/trainable_pct": "trainable_pct",
    "time/train_s": "train_s",
    "time/profile_s": "profile_s",
    "time/total_s": "total_s",  # profiling + planning + training
}
# The task's own headline metric (task.headline_metric in each run's config: val/acc for one task, val/mcc
# or val/pearson for another), read on the test split (test/acc, ...). Targets name it `headline`; the table's
# headline_* columns hold it.
HEADLINE = "headline"
GROUP = ["task", "model", "baseline"]
ROW = [*GROUP, "variant", HEADLINE]
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Target:
    name: str
    metric: str  # a key of SUMMARISED, or "headline"
    compare: str  # "ratio" (to the reference baseline) or "absolute"
    op: str
    value: float
    # compare: ratio only: the reference's metric to divide by, when not `metric` itself (e.g. profiling time
    # over the reference's training time).
    of: str | None = None

    def __post_init__(self):
        if self.metric not in (*SUMMARISED, HEADLINE):
            raise LayerLensError(
                f"target {self.name!r}: metric must be one of {HEADLINE}, {', '.join(SUMMARISED)}, got {self.metric!r}"
            )
        if self.compare not in ("ratio", "absolute"):
            raise LayerLensError(f"target {self.name!r}: compare must be 'ratio' or 'absolute', got {self.compare!r}")
        if self.op not in OPS:
            raise LayerLensError(f"target {self.name!r}: op must be one of {', '.join(OPS)}, got {self.op!r}")
        if self.of is not None and (self.compare != "ratio" or self.of not in SUMMARISED):
            raise LayerLensError(
                f"target {self.name!r}: of must be one of {', '.join(SUMMARISED)}, with compare: ratio, got {self.of!r}"
            )

    def column(self) -> str:
        short = HEADLINE if self.metric == HEADLINE else SUMMARISED[self.metric]
        if self.compare == "absolute":
            return f"{short}_mean"
        return f"{short}_ratio" if self.of is None else f"{short}_per_ref_{SUMMARISED[self.of]}"

    def verdict(self, row: pd.Series) -> str:
        value = row[self.column()]
        if pd.isna(value):
            return "n/a"
        return "met" if OPS[self.op](value, self.value) else "not met"


def summarise(runs: pd.DataFrame, targets: list[Target], reference: str = "full_ft") -> pd.DataFrame:
    """One row per (task, model, baseline, variant): seeds, runs, mean/std of each metric and of the task's
    headline metric, ratios, targets.

    A variant is a set of runs of one baseline whose logged configs agree except for the seed; it is
    labelled by the config keys in which it differs from the baseline's other runs (empty when alone).
    A variant counts one run per seed, the latest (`one_run_per_seed`).
    Ratios need exactly one reference variant per task and model, and are left empty otherwise; the
    headline's ratio also needs the reference to have the same headline metric.
    """
    if runs.empty:
        raise LayerLensError("no finished LayerLens runs match: run some first, or check source/sweep/task_name")
    for metric in SUMMARISED:
        if metric not in runs:
            runs = runs.assign(**{metric: float("nan")})
    headline = runs[HEADLINE].fillna(DEFAULT_HEADLINE) if HEADLINE in runs else DEFAULT_HEADLINE
    runs = one_run_per_seed(label_variants(runs.assign(**{HEADLINE: headline})))
    runs = runs.assign(headline_value=[row.get(on_test(row[HEADLINE]), float("nan")) for _, row in runs.iterrows()])
    summarised = {**SUMMARISED, "headline_value": HEADLINE}
    grouped = runs.groupby(ROW, sort=True)
    table = grouped.agg(
        n_runs=("run_id", "size"),
        seeds=("seed", lambda s: ",".join(sorted(set(s), key=seed_order))),
        runs=("run_name", lambda s: " ".join(sorted(s))),
    )
    for metric, short in summarised.items():
        table[f"{short}_mean"] = grouped[metric].mean()
        table[f"{short}_std"] = grouped[metric].std(ddof=1)
    table = table.reset_index()
    means = [f"{short}_mean" for short in summarised.values()]
    reference_rows = table.loc[table["baseline"] == reference, ["task", "model", HEADLINE, *means]]
    unique_reference = reference_rows.groupby(["task", "model"]).filter(lambda rows: len(rows) == 1)
    merged = table.merge(unique_reference, on=["task", "model"], how="left", suffixes=("", "_ref"))
    for short in summarised.values():
        table[f"{short}_ratio"] = merged[f"{short}_mean"] / merged[f"{short}_mean_ref"]
    table[f"{HEADLINE}_ratio"] = table[f"{HEADLINE}_ratio"].where(merged[HEADLINE] == merged[f"{HEADLINE}_ref"])
    for target in targets:
        if target.of is not None:
            short, of = SUMMARISED[target.metric], SUMMARISED[target.of]
            table[target.column()] = merged[f"{short}_mean"] / merged[f"{of}_mean_ref"]
    for target in targets:
        table[target.name] = table.apply(target.verdict, axis=1)
    return table


def plan_check_columns() -> dict[str, str]:
    """Metric -> column of the plan checks: the profile's, the plan's, and its consistency in each method."""
    return {
        "profile/grad_corr": "grad corr",
        "profile/grad_corr_p": "grad corr p",
        "profile/fisher_corr": "Fisher corr",
        "profile/fisher_corr_p": "Fisher corr p",
        "profile/utility_cv": "utility CV",
        "plan/utilisation/params": "params budget used",
        **{f"plan/consistency/{method}": f"consistency {method}" for method in METHODS},
        "plan/rank_utility_spearman": "rank-utility Spearman",
        "plan/utility_validity": "utility-gain Spearman",
        "plan/utility_validity_p": "utility-gain p",
        "plan/method_diversity": "methods used",
        "time/profile_s": "profile s",
    }


def plan_checks(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run that profiled and planned: its split-half utility checks and its plan's checks."""
    columns = plan_check_columns()
    present = [metric for metric in columns if metric in runs]
    if "profile/grad_corr" not in present:
        return pd.DataFrame()
    planned = runs.dropna(subset=["profile/grad_corr"]).sort_values(["task", "model", "run_name", "start_time"])
    return planned[["task", "model", "run_name", "sweep", *present]].rename(columns=columns).reset_index(drop=True)


def label_variants(runs: pd.DataFrame) -> pd.DataFrame:
    """Add a `variant` column: `key=value, ...` over the config keys that vary within a baseline's runs.

    Only keys that every one of those runs logged count (a key that a later version of the code added is not a
    choice that was made), and not those that follow the seed, equal to each run's seed (`${seed}` in the config).
    """
    if "config" not in runs:
        return runs.assign(variant="")
    labels = pd.Series("", index=runs.index, dtype=object)
    for _, group in runs.groupby(GROUP):
        configs, seeds = list(group["config"]), [str(seed) for seed in group["seed"]]
        keys = sorted(set.intersection(*(set(config) for config in configs)))
        varying = [
            key
            for key in keys
            if len({config[key] for config in configs}) > 1
            and any(config[key] != seed for config, seed in zip(configs, seeds))
        ]
        labels[group.index] = [", ".join(f"{key}={config[key]}" for key in varying) for config in configs]
    return runs.assign(variant=labels)


def one_run_per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """The latest run (by start_time, else by row) of each task, model, baseline, variant and seed: a seed run
    again replaces its earlier run rather than counting twice."""
    order = runs.sort_values("start_time", kind="stable") if "start_time" in runs else runs
    key = [column for column in [*GROUP, "variant", "seed"] if column in runs]
    return order.drop_duplicates(key, keep="last").sort_index()


def seed_order(seed: str):
    seed = str(seed)
    return (0, int(seed)) if seed.isascii() and seed.isdigit() else (1, seed)
