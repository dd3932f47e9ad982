"""Does a site's utility predict what fine-tuning that site gains? The validity figure of LayerLens's profile.

    python experiments/utility_validity.py [--out DIR] [--warmup-steps 100] [--steps 100] [-- run overrides]

On the run config's backbone and task (`layerlens.run` overrides after --; default all-MiniLM-L6-v2 on MRPC, seed 0):

1. the task head alone trains `--warmup-steps` batches (the warmed head every trial starts from);
2. the reference trial: the head alone trains `--steps` more batches; its selection-split loss is the bar;
3. one trial per site: the same start, the same batches, that site alone adapted (its method at a fixed size of
   about the same parameters, `--sizes`) with the head, built by LayerLens's own `apply_plan`;
   the site's gain is the reference's selection loss minus the trial's (also the accuracy difference);
4. every candidate utility (the profiled one that plans use, its statistics one by one, the profile taken after the
   head's warm-up, the top singular values of the site's accumulated gradient, and the profile-free priors) is held
   against the measured gains: Spearman correlation over all sites and within each site kind, with p-values.

Training runs without dropout (eval mode), so a trial is a function of its site alone. Each finished trial is
appended to DIR/gains.jsonl at once and skipped when the script is started again with the same DIR; the tables
(results.md, results.json) are rewritten from what is there. Reads the selection split only: never the test split.
"""

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy.stats import rankdata, spearmanr

from layerlens.data import TRAIN
from layerlens.lens.apply import apply_plan, task_head, train_only
from layerlens.lens.profiling import profile_sites
from layerlens.lens.sites import discover_sites
from layerlens.paths import CONF_DIR
from layerlens.pipeline import build_datamodule
from layerlens.planning.choices import Choice, Plan
from layerlens.planning.costs import Costs
from layerlens.planning.utilities import planning_utilities
from layerlens.settings import resolve_settings
from layerlens.training.frozen_bottom import FrozenBottomCache, cacheable

ROOT = Path(__file__).resolve().parent.parent
NONE = Costs(0.0, 0.0, 0.0, 0.0)


def same_sites(model, sites):
    """`sites` as found in `model` (a copy of the model they were found in)."""
    return discover_sites(model, list(dict.fromkeys(site.kind for site in sites)))


def profile(model, sites, batches, settings):
    """profile_sites on a copy of `model`, every weight requiring gradients."""
    model = copy.deepcopy(model).requires_grad_(True)
    return profile_sites(model, same_sites(model, sites), batches, settings)


def single_site_plan(sites, index: int | None, sizes: dict[str, int]) -> Plan:
    """A plan that adapts site `index` alone (none: no site) at its method's fixed size."""
    choices = [
        Choice(
            s.name,
            s.layer,
            s.kind,
            s.method,
            s.method if i == index else "none",
            sizes[s.method] if i == index else 0,
            0.0,
            NONE,
        )
        for i, s in enumerate(sites)
    ]
    return Plan(choices, {}, 0.0)


def fixed_batches(data, seed: int, count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        data.tokenised[TRAIN], batch_size=data.batch_size, shuffle=True, generator=generator, collate_fn=data.collate
    )
    batches = []
    while len(batches) < count:
        batches += list(loader)
    return batches[:count]


def train(model: torch.nn.Module, batches: list[dict], lr: float) -> None:
    model.eval()  # no dropout: a trial depends on its site alone
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)


@torch.no_grad()
def selection_scores(model: torch.nn.Module, batches: list[dict]) -> tuple[float, float]:
    model.eval()
    loss = correct = rows = 0.0
    for batch in batches:
        out = model(**batch)
        n = batch["labels"].shape[0]
        loss += float(out.loss) * n
        correct += float((out.logits.argmax(-1) == batch["labels"]).sum())
        rows += n
    return loss / rows, correct / rows


def trial(base, sites, index, sizes, head_state, batches, selection, lr) -> dict:
    model = copy.deepcopy(base)
    model.load_state_dict(head_state, strict=False)
    sites = same_sites(model, sites)
    model = apply_plan(model, sites, single_site_plan(sites, index, sizes), alpha_ratio=2.0, dropout=0.0)
    if index is not None and sites[index].layer > 0 and cacheable(model):
        FrozenBottomCache(model, sites[index].layer)
    start = time.perf_counter()
    train(model, batches, lr)
    loss, acc = selection_scores(model, selection)
    return {
        "site": None if index is None else sites[index].name,
        "selection_loss": loss,
        "selection_acc": acc,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seconds": time.perf_counter() - start,
    }


def gradient_spectra(model, sites, batches, ranks: dict[str, int]) -> np.ndarray:
    """Per site: the sum of the top-r singular values of the mean gradient of each weight matrix it is profiled
    by (r: the site's trial size), the first-order gain bound of a rank-r update of that matrix."""
    model = copy.deepcopy(model).eval().requires_grad_(True)
    for batch in batches:
        (model(**batch).loss / len(batches)).backward()
    values = []
    for site in same_sites(model, sites):
        weights = [p for m in site.profiled for p in m.parameters() if p.ndim == 2]
        values.append(sum(float(torch.linalg.svdvals(w.grad)[: ranks[site.method]].sum()) for w in weights))
    return np.array(values)


def correlations(gains: np.ndarray, utility: np.ndarray, kinds: list[str]) -> dict:
    overall = spearmanr(utility, gains)
    within = {}
    for kind in dict.fromkeys(kinds):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        if len(rows) >= 3 and len(set(utility[rows])) > 1:
            r = spearmanr(utility[rows], gains[rows])
            within[kind] = {"rho": float(r.statistic), "p": float(r.pvalue), "n": len(rows)}
    return {
        "rho": float(overall.statistic),
        "p": float(overall.pvalue),
        "n": len(gains),
        "within": within,
        "within_mean_rho": float(np.mean([w["rho"] for w in within.values()])) if within else float("nan"),
    }


def write_tables(out: Path, sites, candidates: dict[str, np.ndarray], records: dict, header: list[str]) -> None:
    reference = records.get(None)
    done = [i for i, s in enumerate(sites) if s.name in records]
    if reference is None or len(done) < 3:
        return
    kinds = [sites[i].kind for i in done]
    results = {}
    for metric in ("selection_loss", "selection_acc"):
        sign = 1.0 if metric == "selection_loss" else -1.0  # a gain: lower loss, higher accuracy
        gains = np.array([sign * (reference[metric] - records[sites[i].name][metric]) for i in done])
        results[metric] = {name: correlations(gains, values[done], kinds) for name, values in candidates.items()}
    per_site = [
        {
            "site": sites[i].name,
            "kind": sites[i].kind,
            "layer": sites[i].layer,
            "loss_gain": reference["selection_loss"] - records[sites[i].name]["selection_loss"],
            "acc_gain": records[sites[i].name]["selection_acc"] - reference["selection_acc"],
            **{name: float(values[i]) for name, values in candidates.items()},
        }
        for i in done
    ]
    (out / "results.json").write_text(
        json.dumps({"reference": reference, "correlations": results, "sites": per_site}, indent=2)
    )
    kind_names = list(dict.fromkeys(kinds))
    lines = [
        *header,
        "",
        f"{len(done)} of {len(sites)} sites measured. Reference (the head alone): selection loss "
        f"{reference['selection_loss']:.4f}, accuracy {reference['selection_acc']:.4f}.",
        "",
    ]
    for metric, label in (
        ("selection_loss", "gain = drop in selection-split loss"),
        ("selection_acc", "gain = rise in selection-split accuracy"),
    ):
        lines += [
            f"### Spearman ρ of each utility with the measured gain ({label})",
            "",
            "| utility | ρ, all sites (p) | mean ρ within a kind | " + " | ".join(kind_names) + " |",
            "|---|---|---|" + "---|" * len(kind_names),
        ]
        for name, c in results[metric].items():
            within = [
                f"{c['within'][k]['rho']:+.2f} (p {c['within'][k]['p']:.2g})" if k in c["within"] else "–"
                for k in kind_names
            ]
            lines.append(
                f"| {name} | {c['rho']:+.3f} (p {c['p']:.2g}) | {c['within_mean_rho']:+.2f} | "
                + " | ".join(within)
                + " |"
            )
        lines.append("")
    lines += [
        "### Per site",
        "",
        "| site | loss gain | acc gain | " + " | ".join(candidates) + " |",
        "|---|---|---|" + "---|" * len(candidates),
    ]
    lines += [
        f"| {r['site']} | {r['loss_gain']:+.4f} | {r['acc_gain']:+.4f} | "
        + " | ".join(f"{r[name]:.3g}" for name in candidates)
        + " |"
        for r in per_site
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def write_curve(out: Path, sites, records: dict, sizes: dict[str, int], scale: int) -> None:
    """Append to results.md the gain at `scale` times each method's size against the gain at its size, and the
    exponent e that gain ∝ size^e implies (the planner assumes baseline.planner.gain_exponent, 0.5)."""
    reference = records[None]["selection_loss"]
    rows, exponents = [], {}
    for site in sites:
        small, large = records.get(site.name), records.get(f"{site.name}@x{scale}")
        if small is None or large is None:
            continue
        g1, g2 = reference - small["selection_loss"], reference - large["selection_loss"]
        e = float(np.log(g2 / g1) / np.log(scale)) if g1 > 0 and g2 > 0 else float("nan")
        rows.append(
            f"| {site.name} | {site.method} {sizes[site.method]} → {sizes[site.method] * scale} | "
            f"{g1:+.4f} | {g2:+.4f} | {e:.2f} |"
        )
        if np.isfinite(e):
            exponents.setdefault(site.method, []).append(e)
    summary = [
        f"{method}: median {np.median(values):.2f} over {len(values)} sites (range {min(values):.2f} to "
        f"{max(values):.2f})"
        for method, values in exponents.items()
    ]
    lines = [
        "",
        f"### The gain curve: {scale}x the size",
        "",
        f"Gain (drop in selection loss against the head alone) at each method's size and at {scale}x it; "
        "e: the exponent that gain ∝ size^e implies (the planner assumes 0.5 for every method); "
        "nan where a gain is not positive.",
        "",
        *(f"- {line}" for line in summary),
        "",
        "| site | sizes | gain | gain at the larger size | e |",
        "|---|---|---|---|---|",
        *rows,
    ]
    with open(out / "results.md", "a") as f:
        f.write("\n".join(lines) + "\n")


def reliability(first: Path, second: Path) -> str:
    """How well two replicates' one-site gains agree (Spearman over the sites both measured, and within each kind),
    and how well each replicate's utilities predict the other's gains: no utility can predict gains better than
    the gains predict themselves."""
    runs = [json.loads((folder / "results.json").read_text()) for folder in (first, second)]
    by_site = [{row["site"]: row for row in run["sites"]} for run in runs]
    sites = [name for name in by_site[0] if name in by_site[1]]
    kinds = [by_site[0][name]["kind"] for name in sites]
    lines = [
        f"# One-site gains, replicated: {first.name} against {second.name}",
        "",
        f"{len(sites)} sites measured in both. Spearman ρ (p) over all sites, and the mean ρ within a kind.",
        "",
    ]
    lines += ["| what | ρ, all sites (p) | mean ρ within a kind |", "|---|---|---|"]
    for metric in ("loss_gain", "acc_gain"):
        gains = [np.array([by_site[i][name][metric] for name in sites]) for i in (0, 1)]
        c = correlations(gains[1], gains[0], kinds)
        lines.append(
            f"| {metric} of one replicate against the other's | {c['rho']:+.3f} (p {c['p']:.2g}) | "
            f"{c['within_mean_rho']:+.2f} |"
        )
    utilities = [
        name for name in by_site[0][sites[0]] if name not in ("site", "kind", "layer", "loss_gain", "acc_gain")
    ]
    for name in utilities:
        for i, j in ((0, 1), (1, 0)):
            values = np.array([by_site[i][site][name] for site in sites])
            gains = np.array([by_site[j][site]["loss_gain"] for site in sites])
            c = correlations(gains, values, kinds)
            lines.append(
                f"| {name} of {(first, second)[i].name} against the loss gain of {(first, second)[j].name} | "
                f"{c['rho']:+.3f} (p {c['p']:.2g}) | {c['within_mean_rho']:+.2f} |"
            )
    # The best estimate of a site's gain is the mean over replicates (ranks averaged: gains' scales differ by seed).
    mean_gain = np.mean([rankdata([by_site[i][site]["loss_gain"] for site in sites]) for i in (0, 1)], axis=0)
    for name in utilities:
        values = np.mean([rankdata([by_site[i][site][name] for site in sites]) for i in (0, 1)], axis=0)
        c = correlations(mean_gain, values, kinds)
        lines.append(
            f"| {name}, mean rank of both, against the mean rank of both loss gains | "
            f"{c['rho']:+.3f} (p {c['p']:.2g}) | {c['within_mean_rho']:+.2f} |"
        )
    text = "\n".join(lines) + "\n"
    (first / "reliability.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="results folder (default: a dated one under experiments/results)")
    parser.add_argument("--warmup-steps", type=int, default=100, help="batches the head trains alone first")
    parser.add_argument("--steps", type=int, default=100, help="batches each trial trains")
    parser.add_argument("--sizes", default="lora=4,adapter=4,prefix=4", help="the fixed size of each method")
    parser.add_argument(
        "--curve-scale",
        type=int,
        default=4,
        help="then each site of --curve-layers again at this many times its size, for the gain curve (1: no curve)",
    )
    parser.add_argument("--curve-layers", default="3,5", help="the layers whose sites the gain curve measures")
    parser.add_argument(
        "--reliability",
        type=Path,
        metavar="DIR",
        help="only compare --out's gains with those of DIR, a replicate (e.g. another seed), into --out/reliability.md",
    )
    parser.add_argument("overrides", nargs="*", help="layerlens.run overrides (after --)")
    args = parser.parse_args()
    if args.reliability:
        print(reliability(args.out, args.reliability))
        return
    sizes = {k: int(v) for k, v in (item.split("=") for item in args.sizes.split(","))}
    out = args.out or ROOT / "experiments" / "results" / f"{datetime.now(timezone.utc):%F-%H%M}-utility-validity"
    out.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("run", ["baseline=layerlens", "logger=none", *args.overrides])
    s = resolve_settings(cfg)
    L.seed_everything(s.seed)
    data = build_datamodule(s, s.backbone.tokenizer())
    base = s.backbone.classifier(s.task.num_labels)
    sites = discover_sites(base, s.baseline.sites)
    profile_batches = fixed_batches(data, s.seed, s.baseline.profile.num_batches)
    train_batches = fixed_batches(data, s.seed + 1, args.warmup_steps + args.steps)
    selection = list(data.val_dataloader())

    start = time.perf_counter()
    cold = profile(base, sites, profile_batches, s.baseline.profile)
    warmed = train_only(copy.deepcopy(base), task_head(base))
    train(warmed, train_batches[: args.warmup_steps], s.baseline.lr)
    head_state = {k: v for k, v in warmed.state_dict().items() if k.split(".")[0] in task_head(base)}
    warm = profile(warmed, sites, profile_batches, s.baseline.profile)
    layers, kinds = [site.layer for site in sites], [site.kind for site in sites]
    kind_prior = OmegaConf.load(CONF_DIR / "baseline" / "layerlens_kind_depth.yaml").planner.kind_prior
    prior = planning_utilities("kind_depth", cold.utility(), layers, kinds, 0, dict(kind_prior))
    candidates = {
        "profiled (LayerLens's utility)": cold.utility(),
        **{f"profiled: {name} alone": cold.statistic(name) for name in ("grad_norm", "fisher", "sensitivity")},
        "profiled after the head's warm-up": warm.utility(),
        f"gradient spectrum, top-r singular values (r = {args.sizes})": gradient_spectra(
            base, sites, profile_batches, sizes
        ),
        "gradient spectrum after the head's warm-up": gradient_spectra(warmed, sites, profile_batches, sizes),
        "depth prior (layer + 1)": np.array(layers, dtype=float) + 1,
        "kind x depth prior (layerlens_kind_depth)": prior,
    }
    profile_s = time.perf_counter() - start
    header = [
        f"# Utility validity: {s.backbone.name} on {s.task.name}, seed {s.seed}",
        "",
        f"Command: `python experiments/utility_validity.py {shlex.join(sys.argv[1:])}`",
        "",
        f"Each trial: the warmed head ({args.warmup_steps} batches of {s.batch_size}, head alone) plus one site "
        f"({args.sizes}), {args.steps} more batches, AdamW lr {s.baseline.lr}, no dropout; scored on the "
        f"selection split ({sum(len(b['labels']) for b in selection)} rows held out of train). Profiles: "
        f"{s.baseline.profile.num_batches} batches. Machine: {platform.processor() or platform.machine()} x "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; profiles and "
        f"spectra took {profile_s:.0f} s.",
    ]

    log = out / "gains.jsonl"
    records = {}
    if log.is_file():
        records = {r["site"]: r for r in map(json.loads, log.read_text().splitlines())}
    trial_batches = train_batches[args.warmup_steps :]
    for index in [None, *range(len(sites))]:
        name = None if index is None else sites[index].name
        if name in records:
            continue
        record = trial(base, sites, index, sizes, head_state, trial_batches, selection, s.baseline.lr)
        records[name] = record
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"{name or 'head alone'}: selection loss {record['selection_loss']:.4f}, acc "
            f"{record['selection_acc']:.4f} ({record['seconds']:.0f} s)",
            flush=True,
        )
        write_tables(out, sites, candidates, records, header)
    write_tables(out, sites, candidates, records, header)
    if args.curve_scale > 1:  # the gain curve: the same trials at `curve_scale` times the size
        scaled = {method: size * args.curve_scale for method, size in sizes.items()}
        layers_wanted = {int(x) for x in args.curve_layers.split(",")}
        for index in [i for i, site in enumerate(sites) if site.layer in layers_wanted]:
            name = f"{sites[index].name}@x{args.curve_scale}"
            if name in records:
                continue
            record = {
                **trial(base, sites, index, scaled, head_state, trial_batches, selection, s.baseline.lr),
                "site": name,
            }
            records[name] = record
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{name}: selection loss {record['selection_loss']:.4f} ({record['seconds']:.0f} s)", flush=True)
        write_curve(out, sites, records, sizes, args.curve_scale)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
