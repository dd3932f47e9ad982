"""Benchmark of the budgeted allocator: the native solver against scipy's MILP and a greedy baseline.

Instances come from the project's own cost model (layerlens.planning.costs) on three real shapes and a
synthetic large one, each site offering "none" plus 16 sizes of its method (the planner's default size
list), valued as the planner does: utility * size ** 0.5 with log-normal utilities. Every budget is set
so that it binds (see `instance`). Per (sites, budgets, solver) the script reports the median wall time,
the objective, the gap to the best proven upper bound and whether every budget holds.

    python experiments/allocator_bench.py            # the full run (about 10 minutes)
    python experiments/allocator_bench.py --quick    # a fast check
    python experiments/allocator_bench.py --quick --sites 560 --out /tmp/bench   # one size, to compare two builds
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize

from layerlens import _rank_alloc
from layerlens.planning.allocator import BUDGET_TOLERANCE, Flat, allocate
from layerlens.planning.costs import SiteSpec, Workload, option_costs
from layerlens.provenance import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for its tests' references
from tests.allocator_reference import allocate_greedy, milp

SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32]  # conf/baseline/layerlens.yaml
GAIN_EXPONENT = 0.5
COST_NAMES = ["params", "flops", "memory_mb", "latency_ms"]


@dataclass(frozen=True)
class Model:
    name: str
    layers: int
    sites: list[tuple[str, str, int, int]]  # per layer: (kind, method, d_in, d_out)
    workload: Workload


def encoder(name: str, layers: int, hidden: int, ffn: int, heads: int) -> Model:
    """A BERT-style encoder with six sites per layer, the three methods mixed as conf/baseline/layerlens.yaml
    mixes them: LoRA on query, value and the two feed-forward linears, an adapter after the feed-forward
    block and a prefix on self-attention. MRPC-like workload: batch 16 of about 60 tokens, padded to 80."""
    sites = [
        ("query", "lora", hidden, hidden),
        ("value", "lora", hidden, hidden),
        ("ffn_in", "lora", hidden, ffn),
        ("ffn_out", "lora", ffn, hidden),
        ("ffn_block", "adapter", hidden, hidden),
        ("attention", "prefix", hidden, hidden),
    ]
    return Model(name, layers, sites, Workload(16, 16 * 60.0, 80.0, heads, 2.0e10))


def llm(name: str, layers: int) -> Model:
    """A 70B-class decoder (hidden 8192, ffn 28672, 8 key-value heads of 128): LoRA on its seven
    projections. Workload: batch 8 of 4096 tokens."""
    h, kv, ffn = 8192, 1024, 28672
    sites = [
        ("q", "lora", h, h),
        ("k", "lora", h, kv),
        ("v", "lora", h, kv),
        ("o", "lora", h, h),
        ("gate", "lora", h, ffn),
        ("up", "lora", h, ffn),
        ("down", "lora", ffn, h),
    ]
    return Model(name, layers, sites, Workload(8, 8 * 4096.0, 4096.0, 64, 4.0e14))


MODELS = {
    36: encoder("MiniLM-L6: 6 layers x 6 sites, hidden 384, ffn 1536", 6, 384, 1536, 12),
    72: encoder("BERT-base: 12 layers x 6 sites, hidden 768, ffn 3072", 12, 768, 3072, 12),
    560: llm("an 80-layer LLM: 80 layers x 7 sites", 80),
    10_000: llm("the LLM's layers repeated: the first 10,000 sites of 1,429 layers", 1429),
}


@dataclass
class Instance:
    values: np.ndarray  # [sites, options]
    costs: np.ndarray  # [sites, options, m]
    budgets: np.ndarray  # [m], in the order of COST_NAMES

    @property
    def flat(self) -> Flat:
        """(values, costs, offsets, budgets) as the native solver takes them."""
        n, options, m = self.costs.shape
        return Flat(
            self.values.ravel(),
            self.costs.reshape(n * options, m),
            np.arange(0, n * options + 1, options, dtype=np.int64),
            self.budgets,
        )


def site_table(sites: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Values [sites, 17] and costs [sites, 17, 4] (COST_NAMES) of the model with `sites` sites."""
    model = MODELS[sites]
    rng = np.random.default_rng(seed)
    specs = [
        SiteSpec(f"L{layer}.{kind}", layer, kind, method, d_in, d_out, float(rng.lognormal(0.0, 1.0)))
        for layer in range(model.layers)
        for kind, method, d_in, d_out in model.sites
    ][:sites]
    sizes = [0, *SIZES]
    values = np.array([[s.utility * size**GAIN_EXPONENT for size in sizes] for s in specs])
    costs = np.array(
        [
            [
                list(option_costs(s, s.method if size else "none", size, model.workload).as_dict().values())
                for size in sizes
            ]
            for s in specs
        ]
    )
    return values, costs


def instance(sites: int, m: int, seed: int, params_fraction: float = 0.1, shrink: float = 0.97) -> Instance:
    """A seeded instance with m = 2 (params, memory_mb) or 4 (all of COST_NAMES) budgets, every one binding.

    The budgets are `shrink` times the costs of the plan that takes each site's best option at positive
    multipliers mu * w (w_k random in [0.5, 2] over the costliest plan's cost k), with mu set so that this
    plan spends `params_fraction` of the costliest plan's params: the budgets are in proportion to what a
    plan balanced between them spends, and each has a positive multiplier in the LP relaxation. (The cost
    model makes latency_ms a fixed multiple of flops, and flops twice params for LoRA: those budgets are
    tied, all tight at once.)"""
    values, costs = site_table(sites, seed)
    ks = [0, 2] if m == 2 else [0, 1, 2, 3]
    costs = np.ascontiguousarray(costs[:, :, ks])
    rng = np.random.default_rng([seed, m])
    w = rng.uniform(0.5, 2.0, m) / costs.max(axis=1).sum(axis=0)
    weighted = costs @ w
    rows = np.arange(sites)

    def spent(mu):
        return costs[rows, np.argmax(values - mu * weighted, axis=1)].sum(axis=0)

    target = params_fraction * costs[:, :, 0].max(axis=1).sum()
    lo, hi = 0.0, 1.0
    while spent(hi)[0] > target:
        lo, hi = hi, 2 * hi
    for _ in range(60):  # bisection: params spent falls as mu grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spent(mid)[0] > target else (lo, mid)
    return Instance(values, costs, shrink * spent(hi))


def lagrangian_bound(inst: Instance) -> float:
    """An upper bound on any plan's value: the Lagrangian dual L(lam) = lam.B + sum_i max_j (v_ij - lam.c_ij),
    valid at every lam >= 0, made small by a line search along 1 / B and then Nelder-Mead over log lam."""
    scale = np.where(inst.budgets > 0, inst.budgets, 1.0)

    def dual(lam):
        return float(lam @ inst.budgets + (inst.values - inst.costs @ lam).max(axis=1).sum())

    ray = optimize.minimize_scalar(lambda t: dual(np.exp(t) / scale), bounds=(-40, 40), method="bounded")
    start = np.full(len(scale), ray.x) - np.log(scale)
    best = optimize.minimize(
        lambda x: dual(np.exp(x)),
        start,
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxfev": 1000 * len(scale)},
    )
    return min(dual(np.exp(best.x)), dual(np.exp(start)))


@dataclass
class Solved:
    choice: np.ndarray | None  # option per site; None when the solver found no plan
    status: str = "ok"
    dual_bound: float = np.inf  # what the solver proved no plan exceeds


def solve_native(flat) -> Solved:
    choice, _ = _rank_alloc.solve(*flat)
    return Solved(choice)


def solve_allocate(lists) -> Solved:
    return Solved(np.array(allocate(*lists).choice))


def solve_greedy(lists) -> Solved:
    return Solved(np.array(allocate_greedy(*lists).choice))


def solve_milp(inst: Instance, time_limit: float) -> Solved:
    """The reference MILP of tests/allocator_reference.py (one binary per option, one option per site, one
    row per budget), with a time limit; also its dual bound."""
    res = milp(inst.flat, time_limit)
    n = inst.values.shape[0]
    status = {0: "optimal", 1: "time limit"}.get(res.status, f"status {res.status}")
    bound = -res.mip_dual_bound if res.mip_dual_bound is not None else np.inf
    if res.x is None:
        return Solved(None, status, bound)
    return Solved(res.x.reshape(n, -1).argmax(axis=1), status, bound)


def timed(fn, repeats: int):
    """fn() `repeats` times: its last result, the wall times and the CPU times (this thread) in ms."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = fn()
        cpus.append((time.thread_time() - cpu) * 1e3)
        walls.append((time.perf_counter() - wall) * 1e3)
    return result, walls, cpus


@dataclass
class Settings:
    sites: list[int]
    budgets: list[int]
    seeds: dict[int, int]  # instances per number of sites
    repeats: dict[str, int]  # timing repeats per solver (the MILP and, at 10,000 sites, the greedy: once)
    milp_time_limit: dict[int, float]  # seconds, per number of sites


FULL = Settings(
    sites=[36, 72, 560, 10_000],
    budgets=[2, 4],
    seeds={36: 5, 72: 5, 560: 4, 10_000: 2},
    repeats={"native": 21, "allocate": 5, "greedy": 3, "milp": 1},
    milp_time_limit={36: 20, 72: 20, 560: 20, 10_000: 45},
)
QUICK = Settings(
    sites=[36, 72, 560],
    budgets=[2, 4],
    seeds={36: 2, 72: 2, 560: 2},
    repeats={"native": 5, "allocate": 2, "greedy": 1, "milp": 1},
    milp_time_limit={36: 5, 72: 5, 560: 5},
)
SOLVERS = ["native", "allocate", "greedy", "milp"]


def run_instance(sites: int, m: int, seed: int, settings: Settings) -> list[dict]:
    inst = instance(sites, m, seed)
    flat, lists = inst.flat, (inst.values.tolist(), inst.costs.tolist(), inst.budgets.tolist())
    calls = {
        "native": lambda: solve_native(flat),
        "allocate": lambda: solve_allocate(lists),
        "greedy": lambda: solve_greedy(lists),
        "milp": lambda: solve_milp(inst, settings.milp_time_limit[sites]),
    }
    outcomes = {}
    for name in SOLVERS:
        repeats = 1 if name == "greedy" and sites >= 10_000 else settings.repeats[name]
        outcomes[name] = timed(calls[name], repeats)
    bound = lagrangian_bound(inst)
    milp_bound = outcomes["milp"][0].dual_bound
    upper, source = (milp_bound, "milp") if milp_bound <= bound else (bound, "lagrangian")
    rows = []
    for name, (solved, walls, cpus) in outcomes.items():
        row = {
            "sites": sites,
            "budgets": m,
            "seed": seed,
            "solver": name,
            "repeats": len(walls),
            "median_wall_ms": statistics.median(walls),
            "median_cpu_ms": statistics.median(cpus),
            "status": solved.status,
            "solver_bound": solved.dual_bound,
            "lagrangian_bound": bound,
            "upper_bound": upper,
            "bound_source": source,
        }
        if solved.choice is None:
            row.update(objective=np.nan, gap=np.nan, fits=False)
        else:
            picked = np.arange(sites), solved.choice
            totals = inst.costs[picked].sum(axis=0)
            objective = float(inst.values[picked].sum())
            row.update(
                objective=objective,
                gap=(upper - objective) / upper,
                fits=bool((totals <= inst.budgets * (1 + BUDGET_TOLERANCE)).all()),
            )
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (sites, budgets, solver): median time over every instance and repeat (the per-instance medians'
    median), the gaps' median and maximum, and how many plans kept every budget."""
    out = []
    keys = sorted(
        {(r["sites"], r["budgets"], r["solver"]) for r in rows}, key=lambda k: (k[0], k[1], SOLVERS.index(k[2]))
    )
    for sites, m, solver in keys:
        group = [r for r in rows if (r["sites"], r["budgets"], r["solver"]) == (sites, m, solver)]
        gaps = [r["gap"] for r in group if np.isfinite(r["gap"])]
        out.append(
            {
                "sites": sites,
                "budgets": m,
                "solver": solver,
                "instances": len(group),
                "median_wall_ms": statistics.median(r["median_wall_ms"] for r in group),
                "median_cpu_ms": statistics.median(r["median_cpu_ms"] for r in group),
                "median_gap": statistics.median(gaps) if gaps else np.nan,
                "max_gap": max(gaps) if gaps else np.nan,
                "fit": sum(r["fits"] for r in group),
                "statuses": ", ".join(sorted({r["status"] for r in group})),
            }
        )
    return out


def growth(summary: list[dict], solver: str, m: int, last: int = 0) -> float:
    """The exponent a of time ~ sites^a: a least-squares line through the log-log medians (of the `last`
    largest sizes only, if given)."""
    points = [(r["sites"], r["median_wall_ms"]) for r in summary if r["solver"] == solver and r["budgets"] == m]
    points = points[-last:]
    if len(points) < 2:
        return np.nan
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    colors = {"native": "tab:blue", "allocate": "tab:cyan", "greedy": "tab:orange", "milp": "tab:red"}
    for solver in SOLVERS:
        for m, style in ((2, "-"), (4, "--")):
            group = [r for r in summary if r["solver"] == solver and r["budgets"] == m]
            if not group:
                continue
            ax.plot(
                [r["sites"] for r in group],
                [r["median_wall_ms"] for r in group],
                style,
                marker="o",
                color=colors[solver],
                label=f"{solver}, {m} budgets",
            )
    limited = [r for r in summary if "time limit" in r["statuses"]]
    if limited:
        ax.plot(
            [r["sites"] for r in limited],
            [r["median_wall_ms"] for r in limited],
            "kx",
            markersize=9,
            label="MILP stopped at its time limit",
        )
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1, label="1 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sites (each: none + 16 sizes)")
    ax.set_ylabel("median wall time per solve (ms)")
    ax.set_title("Budgeted allocator: time against problem size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def fmt(x: float, digits: int = 3) -> str:
    if not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def fmt_gap(x: float) -> str:
    """A relative gap; below 1e-12 either way it is rounding, shown as 0."""
    return "n/a" if not np.isfinite(x) else "0" if abs(x) < 1e-12 else f"{x:.2e}"


def readme(summary, rows, settings: Settings, settings_name, command, loads, elapsed, note) -> str:
    lines = [
        "# Budgeted allocator benchmark",
        "",
        f"`{command}` ({settings_name} settings; {elapsed / 60:.1f} minutes in all).",
        "",
        f"Instances per size: {', '.join(f'{k:,}: {v}' for k, v in settings.seeds.items())}; timing repeats "
        f"per instance: {', '.join(f'{k} {v}' for k, v in settings.repeats.items())} (the greedy once at "
        "10,000 sites); MILP time limit (s): "
        + ", ".join(f"{k:,}: {v:g}" for k, v in settings.milp_time_limit.items())
        + ".",
        "",
    ]
    # load=False: the load is sampled at the start and at the end of the benchmark (the line after).
    lines += ["## Machine", ""] + [f"- {line}" for line in machine(packages=("numpy", "scipy"), load=False)]
    lines += [f"- Load average (1, 5, 15 min) at the start: {loads[0]}; at the end: {loads[1]}"]
    if note:
        lines += [f"- {note}"]
    lines += [
        "",
        "## Results",
        "",
        "Median wall time per solve over every instance and repeat (CPU time of the calling thread beside "
        "it), the gap of each solver's plan to the best proven upper bound (median / worst over the "
        f"instances), and how many plans keep every budget (with the solver's {BUDGET_TOLERANCE:g} relative "
        "slack).",
        "",
        "| sites | budgets | solver | instances | median ms (wall) | median ms (CPU) | gap median | gap max "
        "| fit | MILP status |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in summary:
        status = r["statuses"] if r["solver"] == "milp" else ""
        lines.append(
            f"| {r['sites']:,} | {r['budgets']} | {r['solver']} | {r['instances']} "
            f"| {fmt(r['median_wall_ms'])} | {fmt(r['median_cpu_ms'])} "
            f"| {fmt_gap(r['median_gap'])} | {fmt_gap(r['max_gap'])} | "
            f"{r['fit']}/{r['instances']} | {status} |"
        )
    lines += ["", "Speed-up of the native solver over the MILP (ratio of median wall times):", ""]
    for sites in sorted({r["sites"] for r in summary}):
        for m in sorted({r["budgets"] for r in summary}):
            get = {r["solver"]: r for r in summary if r["sites"] == sites and r["budgets"] == m}
            if "native" in get and "milp" in get:
                ratio = get["milp"]["median_wall_ms"] / get["native"]["median_wall_ms"]
                limited = "time limit" in get["milp"]["statuses"]
                lines.append(
                    f"- {sites:,} sites, {m} budgets: {'at least ' if limited else ''}{ratio:,.0f}x"
                    + (" (the MILP stopped at its time limit)" if limited else "")
                )
    lines += [
        "",
        "Where the MILP stopped at its time limit (HiGHS may overrun the limit while it solves the root "
        "LP), what it proved:",
        "",
    ]
    for sites, m in sorted({(r["sites"], r["budgets"]) for r in rows if r["status"] == "time limit"}):
        group = [r for r in rows if (r["sites"], r["budgets"], r["solver"]) == (sites, m, "milp")]
        stopped = [r for r in group if r["status"] == "time limit"]
        finite = [r["solver_bound"] / r["lagrangian_bound"] - 1 for r in stopped if np.isfinite(r["solver_bound"])]
        if len(finite) == len(stopped):
            proved = (
                f"its dual bound {fmt_gap(min(finite))} to {fmt_gap(max(finite))} relative to the Lagrangian "
                "bound (negative: tighter)"
            )
        else:
            proved = "no finite dual bound on some" if finite else "no finite dual bound"
        plans = sum(np.isfinite(r["objective"]) for r in stopped)
        lines.append(
            f"- {sites:,} sites, {m} budgets: {len(stopped)}/{len(group)} instances stopped after "
            f"{statistics.median(r['median_wall_ms'] for r in stopped) / 1e3:.0f} s (median) with a limit "
            f"of {settings.milp_time_limit[sites]:g} s; a plan on {plans}/{len(stopped)}; {proved}."
        )
    sizes = sorted({r["sites"] for r in summary})
    if len(sizes) > 1:
        lines += [
            "",
            "Growth of time with the number of sites: the exponent a of time ~ sites^a, by least squares "
            f"through the log-log medians, over all sizes and between the two largest ({sizes[-2]:,} and "
            f"{sizes[-1]:,}). Below a few hundred sites the native solver's time is mostly its exact search, "
            "which depends on how far the Lagrangian bound is from the optimum more than on the size:",
            "",
        ]
        for solver in SOLVERS:
            exps = [
                f"{m} budgets: {growth(summary, solver, m):.2f} (largest two: {growth(summary, solver, m, 2):.2f})"
                for m in sorted({r["budgets"] for r in summary})
            ]
            lines.append(f"- {solver}: " + "; ".join(exps))
    lines += [
        "",
        "![time against sites](time_vs_sites.png)",
        "",
        "## What was measured",
        "",
        "- **native**: `layerlens._rank_alloc.solve` on the flat arrays that `allocate` hands it (the C++ "
        "solver alone).",
        "- **allocate**: `layerlens.planning.allocator.allocate` on nested lists, as the planner calls it: "
        "the same solver plus the flattening of the lists to arrays (`flatten`).",
        "- **greedy**: `allocate_greedy` (tests/allocator_reference.py) on the same lists, a pure-Python "
        "baseline (not exact).",
        "- **milp**: scipy's `milp` (HiGHS) on the reference model (`milp` in tests/allocator_reference.py), "
        "`mip_rel_gap=0`, with the time limit shown in the settings; timed once per instance.",
        "- **Upper bound**: the smaller of the MILP's dual bound (`-res.mip_dual_bound`; the optimum itself "
        "when the MILP finished) and a Lagrangian bound computed here (`lagrangian_bound`). Gap = (bound - "
        "objective) / bound.",
        "- **Instances**: `instance(sites, budgets, seed)` in `experiments/allocator_bench.py`, seeds 0, 1, ... "
        "per size. " + "; ".join(f"{sites:,} sites: {model.name}" for sites, model in MODELS.items()) + ". "
        "The encoders take LoRA on query, value and the two feed-forward linears, an adapter after the "
        "feed-forward block and a prefix on self-attention; the LLM (hidden 8192, ffn 28672, 8 key-value "
        "heads of 128) LoRA on q, k, v, o, gate, up and down. Each site: none plus LoRA ranks / adapter "
        "widths / prefix lengths 1-8, 10, 12, 14, 16, 20, 24, 28, 32 (17 options). Values: log-normal "
        "utility times size^0.5. Costs: "
        "`layerlens.planning.costs.option_costs`. Budgets: 2 (params, memory_mb) or 4 (params, flops, "
        "memory_mb, latency_ms), each 97% of what the plan that is best at positive multipliers spends "
        "(the multipliers scaled so that it spends 10% of the costliest plan's params), so every budget is "
        "tight. latency_ms is a fixed multiple of flops in the cost model, and flops twice params for "
        "LoRA: in the 4-budget instances those budgets are tied.",
        "",
        "Per-instance rows: `results.csv`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes, instances and repeats (about a minute)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default experiments/results/<today>-allocator-bench)"
    )
    parser.add_argument("--note", default="", help="a line for the README's machine section")
    parser.add_argument(
        "--sites",
        type=int,
        nargs="+",
        default=None,
        help="only these sizes of the settings' (e.g. --sites 560, to compare two builds)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.sites:
        if not set(args.sites) <= set(settings.sites):
            parser.error(f"--sites: choose from {settings.sites}")
        settings = dataclasses.replace(settings, sites=[n for n in settings.sites if n in args.sites])
    out = args.out or Path(__file__).parent / "results" / f"{datetime.date.today():%Y-%m-%d}-allocator-bench"
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", os.path.relpath(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])])
    loads, began = [os.getloadavg()], time.perf_counter()
    rows = []
    for sites in settings.sites:
        for m in settings.budgets:
            for seed in range(settings.seeds[sites]):
                rows += run_instance(sites, m, seed, settings)
                done = [r for r in rows if (r["sites"], r["budgets"], r["seed"]) == (sites, m, seed)]
                print(
                    f"{sites:>6} sites, {m} budgets, seed {seed}: "
                    + ", ".join(f"{r['solver']} {r['median_wall_ms']:.3g} ms gap {r['gap']:.1e}" for r in done),
                    flush=True,
                )
    loads.append(os.getloadavg())
    summary = summarize(rows)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(summary, out / "time_vs_sites.png")
    loads_text = [", ".join(f"{x:.2f}" for x in load) for load in loads]
    (out / "README.md").write_text(
        readme(
            summary,
            rows,
            settings,
            "quick" if args.quick else "default",
            command,
            loads_text,
            time.perf_counter() - began,
            args.note,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
