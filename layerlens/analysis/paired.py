"""Baselines compared seed by seed on the test split: per-seed tables, paired differences, win / tie / loss and
Wilcoxon's signed-rank test; and the per-baseline table of a results folder (results.md, results.csv).

Each pair `a,b` is compared within each task and model where both ran, on the seeds both finished; a seed that one
of them lacks is named and left out. Every number is a test/* metric: runs choose their checkpoint on val/*.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

import pandas as pd
from scipy.stats import wilcoxon

from layerlens.analysis.comparison import SUMMARISED, label_variants, one_run_per_seed, seed_order
from layerlens.data.kinds import on_test
from layerlens.data.sft import HEADLINES
from layerlens.data.tasks import TaskSpec
from layerlens.errors import LayerLensError

TIE = 1e-9  # differences this small are ties (a rounding apart): 9 decimals
TEST = "test/"
# The task metrics of every task kind on the test split, in the report's order: what a pair is compared on by default.
TASK_METRICS = [metric for metric in SUMMARISED if metric.startswith(TEST)]
# The metrics whose lower values are better, on the test split: those a checkpoint is chosen by minimising.
LOWER_IS_BETTER = tuple(on_test(metric) for metric, mode in HEADLINES.items() if mode == "min")


def sign(metric: str) -> int:
    """+1 where a higher value of `metric` is better, -1 where a lower one is."""
    return -1 if metric in LOWER_IS_BETTER else 1


def parse_pairs(value) -> list[tuple[str, str]]:
    """`compare`: None, "a,b", [a, b], or a list of pairs ("a,b" or [a, b]) -> [(a, b), ...]."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    if len(items) == 2 and all(isinstance(item, str) and "," not in item for item in items):
        items = [items]  # [a, b]: one pair
    pairs = []
    for item in items:
        names = item.split(",") if isinstance(item, str) else list(item)
        if len(names) != 2 or not all(isinstance(n, str) and n.strip() for n in names) or names[0] == names[1]:
            raise LayerLensError(
                f"compare: each pair is two different baselines, a,b (several: compare=a,b compare=c,d), got {item!r}"
            )
        pairs.append((names[0].strip(), names[1].strip()))
    return pairs


@dataclass(frozen=True)
class MetricComparison:
    """One metric of a pair: its differences a − b over the seeds both finished, in seed order."""

    metric: str
    differences: tuple[float, ...]

    @property
    def mean(self) -> float:
        return mean(self.differences) if self.differences else math.nan

    @property
    def std(self) -> float:
        """The sample standard deviation (n − 1)."""
        return stdev(self.differences) if len(self.differences) > 1 else math.nan

    @property
    def wins(self) -> int:
        return sum(d > TIE for d in self.differences)

    @property
    def ties(self) -> int:
        return sum(abs(d) <= TIE for d in self.differences)

    @property
    def losses(self) -> int:
        return sum(d < -TIE for d in self.differences)

    @property
    def p(self) -> float:
        """Wilcoxon's signed-rank test, two-sided, on the differences to 9 decimals (so that equal differences,
        such as one more right answer at two seeds, rank as ties whatever rounding a subtraction left), zeros
        dropped; nan below two pairs or with no difference at all."""
        differences = [round(d, 9) for d in self.differences]
        if len(differences) < 2 or not any(differences):
            return math.nan
        return float(wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue)


@dataclass(frozen=True, eq=False)
class PairedComparison:
    task: str
    model: str
    a: str
    b: str
    seeds: tuple[str, ...]  # both finished, paired
    only_a: tuple[str, ...]  # finished by a alone: left out
    only_b: tuple[str, ...]
    values: pd.DataFrame  # index: seed; columns: (baseline, metric)
    metrics: tuple[MetricComparison, ...]

    @property
    def at_or_above(self) -> int:
        """Seeds at which a is at least as good as b (within TIE) in every metric: at or above it, or at or below
        it in a metric that is the lower the better (perplexity, loss)."""
        return sum(
            all(
                sign(m.metric) * (self.values.loc[s, (self.a, m.metric)] - self.values.loc[s, (self.b, m.metric)])
                >= -TIE
                for m in self.metrics
            )
            for s in self.seeds
        )

    def scope(self) -> str:
        """Task, model, split and seeds: what every number of the comparison is over."""
        left_out = [
            f"{name} alone at seed{'s' if len(seeds) > 1 else ''} {seed_ranges(seeds)}"
            for name, seeds in ((self.a, self.only_a), (self.b, self.only_b))
            if seeds
        ]
        return (
            f"task {self.task}, model {self.model}, test split: {len(self.seeds)} seeds both finished"
            + (f" ({seed_ranges(self.seeds)})" if self.seeds else "")
            + (f"; not paired: {', '.join(left_out)}" if left_out else "")
        )

    def seed_frame(self) -> pd.DataFrame:
        """Per seed, each metric of a and b side by side (text, 4 decimals)."""
        columns = {
            f"{name} {m.metric}": [f"{self.values.loc[s, (name, m.metric)]:.4f}" for s in self.seeds]
            for m in self.metrics
            for name in (self.a, self.b)
        }
        return pd.DataFrame({"seed": list(self.seeds), **columns})

    def stats_frame(self) -> pd.DataFrame:
        """Per metric: mean ± sample std of a − b, win / tie / loss, Wilcoxon p (text)."""
        return pd.DataFrame(
            {
                "metric": [m.metric for m in self.metrics],
                f"mean ± sample std of {self.a} − {self.b}": [mean_std(m.differences) for m in self.metrics],
                f"{self.a} higher / tie / lower": [f"{m.wins} / {m.ties} / {m.losses}" for m in self.metrics],
                "Wilcoxon signed-rank p (two-sided)": ["–" if math.isnan(m.p) else f"{m.p:.3g}" for m in self.metrics],
            }
        )

    def markdown(self) -> list[str]:
        lines = [f"Seed by seed, {self.a} against {self.b}, {self.scope()}.", ""]
        if not self.seeds:
            return lines[:1]
        lines += [*markdown_table(self.seed_frame()), "", *markdown_table(self.stats_frame()), ""]
        above = (
            f"{self.a} at least as good as {self.b} (higher, or lower in {', '.join(LOWER_IS_BETTER)}) in every "
            f"metric at {self.at_or_above} of {len(self.seeds)} seeds."
        )
        return [*lines, above]

    def stats_rows(self) -> list[dict]:
        return [
            {
                "task": self.task,
                "model": self.model,
                "a": self.a,
                "b": self.b,
                "metric": m.metric,
                "n_seeds": len(self.seeds),
                "seeds": ",".join(self.seeds),
                "mean_difference": m.mean,
                "std_difference": m.std,
                "wins": m.wins,
                "ties": m.ties,
                "losses": m.losses,
                "wilcoxon_p": m.p,
            }
            for m in self.metrics
        ]


def check_metrics(metrics: list[str] | None) -> None:
    for metric in metrics or []:
        if not str(metric).startswith(TEST):
            raise LayerLensError(
                f"metrics: the report quotes the test split, test/*, got {metric!r} (each run chose "
                "its checkpoint on val/*)"
            )


def compare_pairs(
    runs: pd.DataFrame, pairs: list[tuple[str, str]], metrics: list[str] | None = None, source: str = "the runs"
) -> list[PairedComparison]:
    """Each pair within each task and model where both baselines finished runs: one run per seed (the latest),
    paired by seed. A baseline with no finished run, a pair that never ran the same task and model, one with several
    configurations there, or a metric that is not test/* (or not logged) is refused in one line."""
    if not pairs:
        return []
    runs = one_run_per_seed(label_variants(runs))
    known = sorted(set(runs["baseline"]))
    for name in dict.fromkeys(n for pair in pairs for n in pair):
        if name not in known:
            raise LayerLensError(
                f"compare: no finished run of baseline {name!r} in {source} (baselines: {', '.join(known) or 'none'})"
            )
    check_metrics(metrics)
    comparisons = []
    for a, b in pairs:
        found = [
            _compare(group, task, model, a, b, metrics, source)
            for (task, model), group in runs.groupby(["task", "model"], sort=True, dropna=False)
            if {a, b} <= set(group["baseline"])
        ]
        if not found:
            raise LayerLensError(f"compare: {a} and {b} never ran the same task and model in {source}")
        comparisons += found
    return comparisons


def _compare(
    group: pd.DataFrame, task, model, a: str, b: str, metrics: list[str] | None, source: str
) -> PairedComparison:
    by_baseline = {}
    for name in (a, b):
        rows = group[group["baseline"] == name]
        variants = sorted(set(rows["variant"]))
        if len(variants) > 1:
            raise LayerLensError(
                f"compare: {name} has {len(variants)} configurations on task {task}, model {model} "
                f"in {source} ({' | '.join(variants)}): report one sweep (sweep=...) or log"
            )
        by_baseline[name] = rows.set_index(rows["seed"].astype(str))
    seeds = sorted(set(by_baseline[a].index) & set(by_baseline[b].index), key=seed_order)
    paired = {name: by_baseline[name].loc[seeds] for name in (a, b)}
    if metrics is None:  # every task metric (not the loss) that each paired run logged on the test split
        metrics = [
            m for m in TASK_METRICS if all(m in paired[name] and paired[name][m].notna().all() for name in (a, b))
        ]
    for name in (a, b):
        for metric in metrics:
            missing = paired[name][metric].isna() if metric in paired[name] else pd.Series(True, index=seeds)
            if missing.any():
                run = paired[name].loc[missing[missing].index[0], "run_name"]
                raise LayerLensError(f"metrics: run {run} in {source} logged no {metric}")
    frame = pd.concat({name: paired[name].reindex(columns=list(metrics)).astype(float) for name in (a, b)}, axis=1)
    only = {name: tuple(sorted(set(by_baseline[name].index) - set(seeds), key=seed_order)) for name in (a, b)}
    comparisons = tuple(MetricComparison(m, tuple(frame[(a, m)] - frame[(b, m)])) for m in metrics)
    return PairedComparison(str(task), str(model), a, b, tuple(seeds), only[a], only[b], frame, comparisons)


def mean_std(values, digits: int = 4) -> str:
    values = [v for v in values if not pd.isna(v)]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "–"
    return f"{mean(values):.{digits}f} ± {stdev(values):.{digits}f}"


def seed_ranges(seeds) -> str:
    """0,1,2,3,5 -> '0–3, 5'; seeds that are not numbers are listed as they are."""
    numbers = sorted(int(s) for s in seeds if str(s).isascii() and str(s).isdigit())
    parts, start = [], None
    for i, n in enumerate(numbers):
        start = n if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(f"{start}–{n}" if n > start else str(n))
            start = None
    return ", ".join([*parts, *(str(s) for s in seeds if not (str(s).isascii() and str(s).isdigit()))])


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """A compact Markdown table of text cells."""
    return [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "|" + "---|" * len(frame.columns),
        *("| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)),
    ]


def baseline_frame(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per baseline (and configuration), in the order of their first run that counts: seeds, n, mean ± sample std
    of each metric, trainable parameters (their range) and training time."""
    rows = []
    for _, group in runs.groupby(["baseline", "variant"], sort=False):
        group = group.sort_values("seed", key=lambda s: s.map(seed_order))
        params = sorted({int(p) for p in group.get("params/trainable", pd.Series(dtype=float)).dropna()})
        rows.append(
            {
                "baseline": label(group.iloc[0]),
                "seeds": seed_ranges(list(group["seed"].astype(str))),
                "n": len(group),
                **{m: mean_std(group.get(m, [])) for m in metrics},
                "trainable params": (f"{params[0]:,}" + (f"–{params[-1]:,}" if len(params) > 1 else ""))
                if params
                else "–",
                "train s": mean_std(group.get("time/train_s", []), digits=1),
            }
        )
    return pd.DataFrame(rows)


def label(run: pd.Series) -> str:
    return run["baseline"] + (f" ({run['variant']})" if run.get("variant") else "")


def per_run_csv(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per run, baseline by baseline (in the order of their first run that counts), seed by seed: baseline,
    seed, the metrics (6 decimals), trainable parameters, train s, task, model."""
    first = {key: i for i, key in enumerate(dict.fromkeys(zip(runs["task"], runs["model"])))}
    first_run = {key: i for i, key in enumerate(dict.fromkeys(zip(runs["baseline"], runs["variant"])))}
    rows = runs.loc[
        sorted(
            runs.index,
            key=lambda i: (
                first[(runs.at[i, "task"], runs.at[i, "model"])],
                first_run[(runs.at[i, "baseline"], runs.at[i, "variant"])],
                seed_order(runs.at[i, "seed"]),
            ),
        )
    ]

    def text(column: str, form: str) -> pd.Series | str:
        return rows[column].map(lambda v: "" if pd.isna(v) else format(v, form)) if column in rows else ""

    return pd.DataFrame(
        {
            "baseline": [label(run) for _, run in rows.iterrows()],
            "seed": rows["seed"].astype(str),
            **{m: text(m, ".6f") for m in metrics},
            "params/trainable": text("params/trainable", ".0f"),
            "time/train_s": text("time/train_s", ".1f"),
            "task": rows["task"],
            "model": rows["model"],
        }
    )


def write_results(
    runs: pd.DataFrame, out_dir: Path, pairs: list[tuple[str, str]], metrics: list[str], source: str
) -> str:
    """A results folder's results.md (per task and model: the per-baseline table, then each pair seed by seed)
    and results.csv (one row per run); returns the Markdown."""
    if runs.empty:
        raise LayerLensError(f"source: {source} holds no finished run")
    check_metrics(metrics)
    runs = one_run_per_seed(label_variants(runs)).reset_index(drop=True)
    comparisons = compare_pairs(runs, pairs, metrics, source)
    lines: list[str] = []
    for (task, model), group in runs.groupby(["task", "model"], sort=False, dropna=False):
        config = group.iloc[0]["config"] if "config" in group else {}
        setting = {
            key: config.get(f"task.{key}", getattr(TaskSpec, key))
            for key in ("test_split", "headline_metric", "selection_split")
        }
        heading = (
            f"Task {task}, model {model}: test/* on its {setting['test_split']!r} split, read once with the "
            f"checkpoint chosen by {setting['headline_metric']} on the selection split "
            f"({setting['selection_split']}); mean ± sample std over the seeds each baseline finished. Source: "
            f"{source}."
        )
        lines += [*([""] if lines else []), heading, "", *markdown_table(baseline_frame(group, metrics))]
        for comparison in comparisons:
            if (comparison.task, comparison.model) == (str(task), str(model)):
                lines += ["", *comparison.markdown()]
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    (out_dir / "results.md").write_text(text)
    per_run_csv(runs, metrics).to_csv(out_dir / "results.csv", index=False)
    return text
