"""Which speed levers pay: seconds per training step of each baseline and LayerLens variant, measured in one
process on the same MRPC batches with the default backbone (forward, backward and AdamW step, as in training).

    python experiments/levers_bench.py [--steps 30] [--rounds 2] [--out experiments/results/<date>-levers]

Variants: full_ft; lora (defaults); layerlens at the default budget (no training-time limit: plans over every
layer); layerlens under budget=fast (train_time_pct 45), without and with the frozen-bottom cache; under
train_time_pct = 50 with every site kind and with one method's sites only; and the bare backbone with
backpropagation down to layer k (one bias of layer k's query projection and the head trainable, the layers below
cached), which prices depth alone. Against the planner's estimate these show what its time model misses. Two
generic speed-ups are timed on full_ft and on the train_time_pct = 50 plan: the same batches re-batched in order
of length (less padding), and bf16 autocast of the forward pass. For a cached variant the first pass over
the batches fills the cache (what epoch 1 costs) and a second pass hits it (later epochs); both are reported.
Each round runs every variant once; the median over rounds is reported, with each time as a ratio to full_ft's
in the same round. Writes levers.csv, README.md and each LayerLens variant's plan (plans/) into --out.
"""

import argparse
import re
import statistics
import sys
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import pandas as pd
import torch
from timed_steps import build, provenance, seconds_per_step

from layerlens.lens.apply import task_head, train_only
from layerlens.lens.sites import encoder_layers
from layerlens.training.frozen_bottom import FrozenBottomCache

VARIANTS = {
    "full_ft": ["baseline=full_ft"],
    "lora": ["baseline=lora"],
    "layerlens, default budget (every layer, no time budget)": ["baseline=layerlens"],
    "layerlens, budget=fast (train_time_pct=45), no cache": [
        "baseline=layerlens",
        "budget=fast",
        "baseline.cache_frozen_layers=false",
    ],
    "layerlens, budget=fast (train_time_pct=45), cache": ["baseline=layerlens", "budget=fast"],
    "layerlens, train_time_pct=50, cache": ["baseline=layerlens", "budget.train_time_pct=50"],
    "layerlens, train_time_pct=50, cache, LoRA sites only": [
        "baseline=layerlens",
        "budget.train_time_pct=50",
        "baseline.sites=[query,key,value,attn_out]",
    ],
    "layerlens, train_time_pct=50, cache, adapter sites only": [
        "baseline=layerlens",
        "budget.train_time_pct=50",
        "baseline.sites=[attn_block,ffn_block]",
    ],
    "layerlens, train_time_pct=50, cache, prefix sites only": [
        "baseline=layerlens",
        "budget.train_time_pct=50",
        "baseline.sites=[attention]",
    ],
}
BARE = {f"backbone only, backpropagation to layer {k}": k for k in (0, 2, 3)}  # name -> k
# Generic speed-ups, which would apply to every baseline alike: timed on full_ft and on this plan (after its cache
# fills).
GENERIC_LEVERS = ("full_ft", "layerlens, train_time_pct=50, cache")
BF16_STEPS = 5  # on a CPU without native bf16, autocast is several times slower: a few steps tell


def bare(depth: int, out: Path):
    """full_ft's model with every backbone weight frozen but one bias in layer `depth`'s query projection:
    backpropagation runs from the head down into that layer and no further; the layers below are cached."""
    adapted, data, s, _ = build(["baseline=full_ft"], out)
    model = train_only(adapted.model, task_head(adapted.model))
    encoder_layers(model)[1][depth].attention.self.query.bias.requires_grad = True
    if depth > 0:
        FrozenBottomCache(model, depth)
    return model, data, s, {"plan/lowest_adapted_layer": depth}


def fills_cache(name: str) -> bool:
    return ", cache" in name or BARE.get(name, 0) > 0


def variant(name: str, out: Path):
    if name in BARE:
        return bare(BARE[name], out)
    adapted, data, s, _ = build(VARIANTS[name], out / "plans" / re.sub(r"[^\w=.]+", "-", name).strip("-"))
    return adapted.model, data, s, adapted.metrics


def length_grouped(batches: list[dict], collate) -> list[dict]:
    """The same examples, re-batched in order of length: each batch pads less."""
    rows = []
    for batch in batches:
        for i, n in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
            rows.append({k: v[i, :n].tolist() if v.dim() == 2 else v[i].item() for k, v in batch.items()})
    rows.sort(key=lambda row: len(row["input_ids"]))
    size = len(batches[0]["labels"])
    return [collate(rows[i : i + size]) for i in range(0, len(rows), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path("experiments/results") / f"{datetime.now(timezone.utc):%Y-%m-%d}-levers"
    )
    names = [*VARIANTS, *BARE]
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=names,
        default=names,
        metavar="NAME",
        help="the variants to run, by name (full_ft always runs: the ratios are to it)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    names = [name for name in names if name == "full_ft" or name in args.variants]
    for round_ in range(args.rounds):
        for name in names:
            model, data, s, plan_metrics = variant(name, args.out)
            torch.manual_seed(round_)
            batches = list(islice(iter(data.train_dataloader()), args.steps))
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            first = seconds_per_step(model, batches, s.baseline.lr)
            rows.append(
                {
                    "round": round_,
                    "variant": name,
                    "pass": "first",
                    "s_per_step": first,
                    "trainable": trainable,
                    "lowest_adapted_layer": plan_metrics.get("plan/lowest_adapted_layer"),
                    "estimated_train_time_pct": plan_metrics.get("plan/train_time_pct"),
                    "estimated_sites_latency_ms": plan_metrics.get("plan/latency_ms"),
                }
            )
            if fills_cache(name):
                rows.append(
                    {
                        **rows[-1],
                        "pass": "second (cache hit)",
                        "s_per_step": seconds_per_step(model, batches, s.baseline.lr),
                    }
                )
            if name in GENERIC_LEVERS:
                grouped = length_grouped(batches, data.collate)
                rows.append(
                    {
                        **rows[-1],
                        "pass": "length-grouped batches",
                        "s_per_step": seconds_per_step(model, grouped, s.baseline.lr),
                    }
                )
                rows.append(
                    {
                        **rows[-1],
                        "pass": "bf16 autocast",
                        "s_per_step": seconds_per_step(model, batches[:BF16_STEPS], s.baseline.lr, bf16=True),
                    }
                )
            print(f"round {round_}: {name}: {rows[-1]['s_per_step']:.3f} s/step", file=sys.stderr)
    table = pd.DataFrame(rows)
    # A generic speed-up is compared with full_ft under the same speed-up; everything else with full_ft as it trains.
    full = table[table.variant == "full_ft"].set_index(["round", "pass"]).s_per_step.to_dict()
    table["ratio_to_full_ft"] = [
        t / full.get((r, p), full[(r, "first")]) for t, r, p in zip(table.s_per_step, table["round"], table["pass"])
    ]
    table.to_csv(args.out / "levers.csv", index=False)
    summary = (
        table.groupby(["variant", "pass"], sort=False)
        .agg(
            s_per_step=("s_per_step", statistics.median),
            ratio_to_full_ft=("ratio_to_full_ft", statistics.median),
            trainable=("trainable", "first"),
            lowest_adapted_layer=("lowest_adapted_layer", "first"),
            estimated_train_time_pct=("estimated_train_time_pct", "first"),
            estimated_sites_latency_ms=("estimated_sites_latency_ms", "first"),
        )
        .reset_index()
    )
    (args.out / "README.md").write_text(
        "# Speed levers: seconds per training step\n\n"
        + provenance()
        + f"Each variant trains {args.steps} MRPC training batches (batch size 8; round r draws them in torch seed r's "
        "shuffle, the same for every variant) on all-MiniLM-L6-v2: forward, backward, AdamW step. Median over "
        "rounds of the mean time per step; the ratio is to full_ft's time in the same round (with the same generic "
        "speed-up, if any). For the cached variants, the first pass fills the cache (epoch 1), the second hits it "
        "(epochs 2+). Length-grouped: the same examples re-batched in order of length; bf16: the forward pass "
        f"under torch.autocast(bfloat16), over the first {min(args.steps, BF16_STEPS)} batches only. The "
        "backbone-only variants train one bias of layer k's query projection and the head: what backpropagation "
        "to layer k costs without any site. Estimated train time: the planner's estimate, % of full fine-tuning's "
        "(depth plus the sites' latency); estimated sites' latency: its sum of the sites' latency per batch, in "
        "ms.\n\n" + summary.to_markdown(index=False, floatfmt=".3f") + "\n"
    )
    print(summary.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
