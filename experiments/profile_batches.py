"""Profiling with fewer batches (issue 21.4): what profiling costs at each number of batches, and what the plan and
the utility's validity lose against 32 (the default until its results).

    python experiments/profile_batches.py [--batches 2 4 8 16 32] [--seeds 0 1 2] \
        [--out experiments/results/<date>-profile-batches]

For each seed and number of batches, `layerlens` at the default budget is built as `layerlens.run` builds it (MRPC,
all-MiniLM-L6-v2) with `baseline.profile.num_batches` set; each seed takes its turn over every setting. Reported, per
setting: the median over seeds of `time/profile_s`; the plan's agreement with the same seed's 32-batch plan (the
sites adapted or not alike, with the same method, out of all; Spearman of the sizes over all sites), its worst seed;
the profile's split-half checks; and the Spearman correlation of the utilities with the one-site gains that
experiments/utility_validity.py measured on the selection split (seeds 0 and 1 of its gains), mean over seeds.
Writes profile_batches.csv and README.md into --out.
"""

import argparse
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr
from timed_steps import build, provenance

from layerlens.planning.choices import Plan
from layerlens.planning.validity import measured_gains, utility_validity

RESULTS = Path(__file__).resolve().parent / "results"
GAINS = {
    "seed 0": RESULTS / "2026-12-02-utility-validity-minilm-mrpc" / "gains.jsonl",
    "seed 1": RESULTS / "2026-12-02-utility-validity-minilm-mrpc-seed1" / "gains.jsonl",
}
REFERENCE_BATCHES = 32  # the plans are held to this count's (the default before these results)


def planned(batches: int, seed: int, out: Path) -> tuple[Plan, dict[str, float]]:
    folder = out / "plans" / f"seed-{seed}-batches-{batches}"
    adapted, *_ = build(["baseline=layerlens", f"baseline.profile.num_batches={batches}"], folder, seed)
    return Plan.from_json((folder / "plan.json").read_text()), adapted.metrics


def agreement(plan: Plan, reference: Plan) -> dict[str, float]:
    """How far `plan` is from `reference`: sites adapted or not alike, and the Spearman correlation of sizes."""
    ref = {c.site: c for c in reference.choices}
    same = sum((c.method != "none") == (ref[c.site].method != "none") for c in plan.choices)
    sizes = spearmanr([c.size for c in plan.choices], [ref[c.site].size for c in plan.choices]).statistic
    same_method = sum(c.method == ref[c.site].method for c in plan.choices)
    return {
        "sites_adapted_alike": same,
        "sites_same_method": same_method,
        "sites": len(plan.choices),
        "size_spearman": float(sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / f"{datetime.now(timezone.utc):%Y-%m-%d}-profile-batches",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = sorted(set(args.batches) | {REFERENCE_BATCHES})
    gains = {name: measured_gains(path) for name, path in GAINS.items()}
    rows = []
    for seed in args.seeds:
        plans = {}
        for batches in sorted(settings, key=lambda b: b != REFERENCE_BATCHES):  # the reference first
            plan, metrics = planned(batches, seed, args.out)
            plans[batches] = plan
            utilities = {c.site: c.utility for c in plan.choices}
            row = {"seed": seed, "batches": batches, "profile_s": metrics["time/profile_s"]}
            row.update(agreement(plan, plans[REFERENCE_BATCHES]))
            checks = {k: v for k, v in metrics.items() if k.startswith("profile/") and k != "profile/batches"}
            row.update({k.removeprefix("profile/"): v for k, v in checks.items()})
            for name, measured in gains.items():
                validity = utility_validity(utilities, measured)
                row[f"validity {name}"] = validity["plan/utility_validity"]
                row[f"validity {name} p"] = validity["plan/utility_validity_p"]
            rows.append(row)
            print(f"seed {seed}: {batches} batches: {row['profile_s']:.1f} s", file=sys.stderr)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "profile_batches.csv", index=False)
    summary = table.groupby("batches").agg(
        profile_s=("profile_s", statistics.median),
        sites=("sites", "first"),
        adapted_alike_worst=("sites_adapted_alike", "min"),
        same_method_worst=("sites_same_method", "min"),
        size_spearman_worst=("size_spearman", "min"),
        grad_corr=("grad_corr", "mean"),
        fisher_corr=("fisher_corr", "mean"),
        **{c: (c, "mean") for c in table.columns if c.startswith("validity")},
    )
    summary = summary.reset_index()
    formats = tuple("g" if pd.api.types.is_integer_dtype(summary[c]) else ".3f" for c in summary.columns)
    (args.out / "README.md").write_text(
        "# Profiling with fewer batches\n\n"
        + provenance()
        + "`layerlens` at the default budget on MRPC (all-MiniLM-L6-v2), profiled on the first N training batches "
        f"(batch 8) of seeds {', '.join(map(str, args.seeds))}. profile_s: median over seeds of the seconds of "
        f"profiling; adapted alike / same method / size Spearman: the plan against the same seed's "
        f"{REFERENCE_BATCHES}-batch plan, the worst seed; grad_corr / fisher_corr: the profile's split-half checks "
        "(utility from the even batches against the odd batches' gradient norm / Fisher trace), mean over seeds; "
        "validity: Spearman of the utilities with the one-site gains on the selection split "
        "(experiments/results/2026-12-02-utility-validity-minilm-mrpc*, gains of seeds 0 and 1), with p, mean over "
        "seeds.\n\n" + summary.to_markdown(index=False, floatfmt=formats) + "\n"
    )
    print(summary.to_markdown(index=False, floatfmt=formats))


if __name__ == "__main__":
    main()
