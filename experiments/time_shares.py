"""Where each baseline's wall time went (issue 21.4), from a results folder's runs.jsonl.

    python experiments/time_shares.py DIR

Per baseline, the mean over its finished runs of each part of a run's wall time (time/wall_s: from loading the data
to the test split's score), as a share of it: loading and tokenising the data (time/data_s); calibrating, profiling
and planning (time/calibrate_s, time/profile_s, time/plan_s); inside training time (time/train_s), the training steps
(time/steps_s), writing checkpoints (time/checkpoint_s) and the rest (fetching and collating batches, the loop's own
work); validation between epochs (time/validate_s); the selection split's and the test split's scores of the chosen
checkpoint (time/eval_s); and what is left (loading the model, building the adaptation). Writes DIR/time_shares.md.
"""

import argparse
from pathlib import Path

import pandas as pd

from layerlens.analysis.runs import describe_source, finished_runs

PARTS = {
    "data": "time/data_s",
    "calibrate, profile, plan": None,
    "steps": "time/steps_s",
    "checkpoints": "time/checkpoint_s",
    "batches, loop": None,
    "validation": "time/validate_s",
    "selection + test scores": "time/eval_s",
    "model, build, rest": None,
}


def shares(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per baseline: runs, mean wall seconds, and each part's mean share of the wall time (%)."""
    runs = runs.dropna(subset=["time/wall_s"]).copy()
    for metric in ("time/calibrate_s", "time/profile_s", "time/plan_s"):
        runs[metric] = runs[metric].fillna(0.0) if metric in runs else 0.0
    parts = pd.DataFrame(index=runs.index)
    for name, metric in PARTS.items():
        if metric is not None:
            parts[name] = runs[metric]
    parts["calibrate, profile, plan"] = runs["time/calibrate_s"] + runs["time/profile_s"] + runs["time/plan_s"]
    parts["batches, loop"] = runs["time/train_s"] - runs["time/steps_s"] - runs["time/checkpoint_s"]
    parts["model, build, rest"] = runs["time/wall_s"] - parts.sum(axis=1)
    percent = 100 * parts[list(PARTS)].div(runs["time/wall_s"], axis=0)
    percent["baseline"], percent["wall s"] = runs["baseline"], runs["time/wall_s"]
    table = percent.groupby("baseline", sort=True).mean()
    table.insert(0, "runs", runs.groupby("baseline").size())
    return table[["runs", "wall s", *PARTS]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a results folder with runs.jsonl")
    args = parser.parse_args()
    source = str(args.folder / "runs.jsonl")
    table = shares(finished_runs(source))
    text = (
        f"Where each baseline's wall time went: mean share (%) of time/wall_s over its finished runs; "
        f"source {describe_source(source)} (`python experiments/time_shares.py {args.folder}`).\n\n"
        + table.to_markdown(floatfmt=".1f")
        + "\n"
    )
    (args.folder / "time_shares.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
