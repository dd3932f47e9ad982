"""The frozen-layer cache on a decoder (issue 21.4): seconds per training step of SmolLM2-135M as an MRPC classifier,
full fine-tuning, fixed LoRA and one LayerLens plan with and without the cache, on the same batches in one process.

    python experiments/decoder_cache_bench.py [--steps 10] [--rounds 2] [--out experiments/results/<date>-decoder-cache]

The LayerLens plan is made once (`budget.train_time_pct`, default 50, with the analytic time model, so that it
adapts the upper layers only; the profile on `--profile-batches` batches) and then applied twice from its plan.json:
with `baseline.cache_frozen_layers=false`, and with the cache, whose first pass over the batches fills it (what
epoch 1 costs) and second pass hits it (epochs 2+). Each round builds every variant afresh and times it on the same
batches (round r draws them in torch seed r's shuffle); the median over rounds of the mean step is reported, with
its ratio to full fine-tuning's in the same round. Writes decoder_cache.csv, README.md and the plan into --out.
"""

import argparse
import statistics
import sys
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import pandas as pd
import torch
from timed_steps import build, provenance, seconds_per_step

from layerlens.planning.choices import Plan

DECODER = ["model=smollm2_135m", "task=mrpc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-time-pct", type=float, default=50)
    parser.add_argument("--profile-batches", type=int, default=8)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / f"{datetime.now(timezone.utc):%Y-%m-%d}-decoder-cache",
    )
    args = parser.parse_args()
    plan_dir = args.out / "plan"
    layerlens = [
        *DECODER,
        "baseline=layerlens",
        f"budget.train_time_pct={args.train_time_pct:g}",
        f"baseline.profile.num_batches={args.profile_batches}",
    ]
    build(layerlens, plan_dir)  # profiles and plans once; every round applies this plan.json
    plan = Plan.from_json((plan_dir / "plan.json").read_text())
    variants = {
        "full_ft": ([*DECODER, "baseline=full_ft"], False),
        "lora": ([*DECODER, "baseline=lora"], False),
        "layerlens, no cache": ([*layerlens, "baseline.cache_frozen_layers=false"], True),
        "layerlens, cache": (layerlens, True),
    }
    rows = []
    for round_ in range(args.rounds):
        for name, (overrides, reuse) in variants.items():
            adapted, data, s, _ = build(overrides, plan_dir if reuse else args.out / "scratch", reuse_plan=reuse)
            torch.manual_seed(round_)
            batches = list(islice(iter(data.train_dataloader()), args.steps))
            passes = ["first (fills the cache)", "second (cache hit)"] if name.endswith(", cache") else ["first"]
            for pass_ in passes:
                rows.append(
                    {
                        "round": round_,
                        "variant": name,
                        "pass": pass_,
                        "s_per_step": seconds_per_step(adapted.model, batches, s.baseline.lr),
                        "trainable": sum(p.numel() for p in adapted.model.parameters() if p.requires_grad),
                    }
                )
                print(f"round {round_}: {name}, {pass_}: {rows[-1]['s_per_step']:.3f} s/step", file=sys.stderr)
    table = pd.DataFrame(rows)
    full = table[table.variant == "full_ft"].set_index("round").s_per_step
    table["ratio_to_full_ft"] = table.s_per_step / table["round"].map(full)
    table.to_csv(args.out / "decoder_cache.csv", index=False)
    summary = (
        table.groupby(["variant", "pass"], sort=False)
        .agg(
            s_per_step=("s_per_step", statistics.median),
            ratio_to_full_ft=("ratio_to_full_ft", statistics.median),
            trainable=("trainable", "first"),
        )
        .reset_index()
    )
    (args.out / "README.md").write_text(
        "# The frozen-layer cache on a decoder: seconds per training step\n\n"
        + provenance()
        + f"SmolLM2-135M (the dequantised Q4_1 copy) as an MRPC classifier, {args.steps} training batches (batch 8) "
        "per variant: forward, backward, AdamW step. The LayerLens plan ([plan/plan.json](plan/plan.json)): "
        f"`budget.train_time_pct={args.train_time_pct:g}` (analytic time model), profiled on "
        f"{args.profile_batches} batches, {len(plan.adapted())} of {len(plan.choices)} sites adapted, the lowest "
        f"in layer {plan.lowest_adapted_layer()}. Median over {args.rounds} rounds; the ratio is to full_ft's step "
        "in the same round.\n\n" + summary.to_markdown(index=False, floatfmt=".3f") + "\n"
    )
    print(summary.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
