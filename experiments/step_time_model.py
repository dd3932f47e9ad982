"""How right is the measured time model? Each plan's planned step time against its measured mean step time over
whole epochs of MRPC (issue 21, item 2), in one process on the machine that calibrated it.

    python experiments/step_time_model.py [--plans NAME ...] [--out experiments/results/<date>-step-time-model]

Every plan is made as `baseline=layerlens baseline.planner.time_model=measured` makes it (the calibration is timed
once and read from its cache by the later plans that offer the same options), then trained as a run trains it:
forward, backward, AdamW step over every training batch of an epoch, as the training loader gives them. The planned
figure is the planner's: the backbone's step at the plan's lowest adapted layer plus its options' added time, per
epoch (the frozen-layer cache fills in epoch 1 and is read in the later ones), and the plan's `plan/train_time_pct`
of full fine-tuning's calibrated step over the run's epochs. Measured: epoch 1, and epoch 2 where the cache is read
(every later epoch reads it as epoch 2 does); the run's mean step counts epoch 1 once and epoch 2 for the others.
Full fine-tuning's epoch is measured too, so that the planned share of its time can be held against the measured
share.
Writes steps.csv and README.md (with the command, commit and machine) into --out.
"""

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from timed_steps import build, provenance, seconds_per_step

from layerlens.lens.baseline import PLAN_FILE, LayerLensBaseline
from layerlens.planning.choices import Plan
from layerlens.planning.step_times import StepTimes, interpolate

MEASURED = ["baseline=layerlens", "baseline.planner.time_model=measured"]
LORA_SITES, ADAPTER_SITES = "[query,key,value,attn_out]", "[attn_block,ffn_block]"
PLANS = {
    "default budget, no time budget": [],
    "train_time_pct=70": ["budget.train_time_pct=70"],
    "train_time_pct=50": ["budget.train_time_pct=50"],
    "train_time_pct=40": ["budget.train_time_pct=40"],
    "train_time_pct=30": ["budget.train_time_pct=30"],
    "LoRA sites only, train_time_pct=50": ["budget.train_time_pct=50", f"baseline.sites={LORA_SITES}"],
    "adapter sites only, train_time_pct=50": ["budget.train_time_pct=50", f"baseline.sites={ADAPTER_SITES}"],
    "prefix sites only, train_time_pct=50": ["budget.train_time_pct=50", "baseline.sites=[attention]"],
    "default budget, no frozen-layer cache, train_time_pct=50": [
        "budget.train_time_pct=50",
        "baseline.cache_frozen_layers=false",
    ],
}


def recording(calibrate, into: list):
    """LayerLensBaseline.calibrate, appending the StepTimes it returns to `into`: what the plan is priced with."""

    def recorded(baseline, *args, **kwargs):
        times, seconds = calibrate(baseline, *args, **kwargs)
        into.append(times)
        return times, seconds

    return recorded


def epoch_ms(model, data, lr: float, epoch: int) -> float:
    """Mean milliseconds of a training step over one whole epoch (`epoch` seeds its shuffle)."""
    torch.manual_seed(epoch)
    return 1e3 * seconds_per_step(model, data.train_dataloader(), lr)


def planned_ms(times: StepTimes, plan: Plan) -> tuple[float, float]:
    """The planner's step time in epoch 1 and in a later epoch: the backbone at the plan's lowest adapted layer
    (from the frozen-layer cache after epoch 1, where the plan has one) plus its options' added milliseconds."""
    lowest = plan.lowest_adapted_layer()
    lowest = times.layers if lowest is None else lowest
    sites = sum(c.costs.latency_ms for c in plan.choices)
    first = interpolate(times.depth_ms, lowest) + sites
    if not times.cached_depth_ms or lowest == 0:
        return first, first
    return first, interpolate(times.cached_depth_ms, lowest) + sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", choices=list(PLANS), default=list(PLANS), metavar="NAME")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("experiments/results") / f"{datetime.now(timezone.utc):%Y-%m-%d}-step-time-model",
    )
    parser.add_argument("overrides", nargs="*", help="layerlens.run overrides for every plan and full_ft (after --)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calibration = ["baseline.planner.calibration_dir=" + str(args.out.resolve() / "calibration")]
    rows = []
    for name in args.plans:
        calibrate, priced = LayerLensBaseline.calibrate, list[StepTimes]()
        LayerLensBaseline.calibrate = recording(calibrate, priced)  # type: ignore[method-assign]
        try:
            folder = args.out / "plans" / name.replace(" ", "").replace(",", "-")
            adapted, data, s, cfg = build([*MEASURED, *calibration, *PLANS[name], *args.overrides], folder, args.seed)
        finally:
            LayerLensBaseline.calibrate = calibrate  # type: ignore[method-assign]
        (times,) = priced
        plan = Plan.from_json((folder / PLAN_FILE).read_text())
        first, later = planned_ms(times, plan)
        epochs = int(cfg.trainer.max_epochs)
        measured_first = epoch_ms(adapted.model, data, s.baseline.lr, 1)
        cached = later != first
        measured_later = epoch_ms(adapted.model, data, s.baseline.lr, 2) if cached else measured_first
        rows.append(
            {
                "plan": name,
                "lowest adapted layer": plan.lowest_adapted_layer(),
                "sites adapted": len(plan.adapted()),
                "cache": cached,
                "planned epoch 1 ms": first,
                "measured epoch 1 ms": measured_first,
                "planned later epochs ms": later,
                "measured later epochs ms": measured_later,
                "planned run ms": (first + (epochs - 1) * later) / epochs,
                "measured run ms": (measured_first + (epochs - 1) * measured_later) / epochs,
                "planned % of full_ft": plan.train_time_pct,
                "calibrated full_ft ms": times.full_ms,
                "calibrate s": adapted.metrics["time/calibrate_s"],
            }
        )
        print(f"{name}: {rows[-1]}", file=sys.stderr)
        del adapted
    full, data, s, cfg = build(["baseline=full_ft", *args.overrides], args.out / "full_ft", args.seed)
    full_ms = epoch_ms(full.model, data, s.baseline.lr, 1)
    table = pd.DataFrame(rows)
    table["error %"] = 100 * (table["planned run ms"] / table["measured run ms"] - 1)
    table["measured % of full_ft"] = 100 * table["measured run ms"] / full_ms
    table.to_csv(args.out / "steps.csv", index=False)
    within = int((table["error %"].abs() <= 10).sum())
    (args.out / "README.md").write_text(
        "# The measured time model: planned against measured step times over whole epochs\n\n"
        + provenance()
        + f"Seed {args.seed}; {epochs}-epoch runs at batch {s.batch_size}. Full fine-tuning's measured epoch: "
        f"{full_ms:.1f} ms a step. Planned within 10% of measured (run mean): {within} of {len(table)} plans.\n\n"
        + table.to_markdown(index=False, floatfmt=".1f")
        + "\n"
    )
    print(table.to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()
