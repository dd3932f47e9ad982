"""Many seeds of each baseline, run side by side; after each run, the results folder's tables.

    python experiments/paired_seeds.py --jobs lora,layerlens:0-19 --jobs full_ft,adalora:0-9 --workers 8 \
        --deadline-s 480 [--variant NAME=OVERRIDES ...] [-- extra layerlens.run overrides]

Each (baseline, seed) is one `python -m layerlens.run` process with `logger=jsonl`; `--workers` of them run at once
(jobs in the order given, seed by seed, so pairs finish together). At the deadline the runs still going are stopped
and left out. Each run appends its line to runs.jsonl as it ends, and a run already FINISHED there is not run again:
start the same command with the same --out to go on where an earlier one stopped (`--dry-run` lists what would run).
A variant is a baseline run with overrides of its own under a name of its own, e.g.
`--variant "layerlens_t50=baseline=layerlens budget.train_time_pct=50"` and `--jobs layerlens_t50,lora:0-2`: its runs
are `layerlens.run baseline.name=layerlens_t50 baseline=layerlens budget.train_time_pct=50`, tabled as layerlens_t50.
Writes experiments/results/<date>-<UTC time>-paired-seeds/ (or --out): runs.jsonl (one line per run), the command
and the machine, and after every run results.md and results.csv, written by the report's analysis
(layerlens.analysis.paired.write_results: per baseline, seeds, mean and sample std of the test split's metrics;
per --compare pair, seed by seed, their differences, win / tie / loss counts and Wilcoxon's signed-rank test).
`--analyse DIR` rewrites DIR's tables without running anything, as would
`python -m layerlens.report source=DIR/runs.jsonl compare=a,b` (which writes the report's own files).
"""

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from layerlens.analysis.paired import parse_pairs, write_results
from layerlens.analysis.runs import describe_source, finished_runs
from layerlens.errors import LayerLensError
from layerlens.provenance import git_commit, machine

ROOT = Path(__file__).resolve().parent.parent


def parse_jobs(spec: str) -> list[tuple[str, int]]:
    """'lora,layerlens:0-19' or 'full_ft:0,2,5' -> [(baseline, seed), ...], seed by seed."""
    baselines, _, seeds = spec.partition(":")
    numbers: list[int] = []
    try:
        for part in seeds.split(","):
            first, _, last = part.partition("-")
            numbers += range(int(first), int(last or first) + 1)
    except ValueError:
        numbers = []
    if not baselines or not numbers:
        raise SystemExit(
            f"error: --jobs must be BASELINE[,BASELINE...]:SEEDS (e.g. lora,layerlens:0-9,12), got {spec!r}"
        )
    return [(baseline, seed) for seed in numbers for baseline in baselines.split(",")]


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """['fast=baseline=layerlens budget.train_time_pct=30'] -> {'fast': ['baseline.name=fast', 'baseline=layerlens',
    'budget.train_time_pct=30']}."""
    variants = {}
    for spec in specs:
        name, _, overrides = spec.partition("=")
        if not name.isidentifier() or not any(o.startswith("baseline=") for o in shlex.split(overrides)):
            raise SystemExit(
                "error: --variant must be NAME=OVERRIDES naming its baseline (e.g. "
                f"'fast=baseline=layerlens budget.train_time_pct=30'), got {spec!r}"
            )
        variants[name] = [f"baseline.name={name}", *shlex.split(overrides)]
    return variants


def run_folder(baseline: str, seed: int) -> str:
    """The name of a run's folder and log under --work."""
    return f"{baseline}-s{seed}"


class Runner:
    def __init__(
        self,
        out: Path,
        work: Path,
        overrides: list[str],
        threads: int,
        deadline: float,
        variants: dict[str, list[str]] | None = None,
    ):
        self.out, self.work, self.overrides, self.threads, self.deadline = out, work, overrides, threads, deadline
        self.variants = variants or {}

    def command(self, baseline: str, seed: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "layerlens.run",
            *self.variants.get(baseline, [f"baseline={baseline}"]),
            f"seed={seed}",
            "logger=jsonl",
            f"logger.path={self.out / 'runs.jsonl'}",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={self.work / run_folder(baseline, seed)}",
            *self.overrides,
        ]

    def run(self, job: tuple[str, int]) -> str:
        baseline, seed = job
        if time.monotonic() > self.deadline:
            return f"{baseline} s{seed}: not started (deadline)"
        name = run_folder(baseline, seed)
        cmd = self.command(baseline, seed)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "TOKENIZERS_PARALLELISM": "false"}
        self.work.mkdir(parents=True, exist_ok=True)
        with open(self.work / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # the run stops at a batch boundary and is recorded KILLED
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return f"{baseline} s{seed}: exit {proc.returncode}"


def finished(out: Path) -> set[tuple[str, str]]:
    """(baseline, seed) of the runs FINISHED in out/runs.jsonl."""
    if not (out / "runs.jsonl").is_file():
        return set()
    runs = finished_runs(str(out / "runs.jsonl"))
    return set(zip(runs["baseline"], runs["seed"].astype(str)))


def analyse(out: Path, compare: list[tuple[str, str]], metrics: list[str], strict: bool = True) -> str:
    """Rewrite out/results.md and results.csv from out/runs.jsonl with the report's analysis. Not strict (while
    runs go on): the pairs of which a baseline has no finished run yet are left out, and no finished run writes
    nothing."""
    runs = finished_runs(str(out / "runs.jsonl"))
    if not strict:
        if runs.empty:
            return ""
        compare = [pair for pair in compare if set(pair) <= set(runs["baseline"])]
    # The log lies beside the tables: named by its file name alone.
    return write_results(runs, out, compare, metrics, describe_source("runs.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", action="append", default=[], help="BASELINES:SEEDS, e.g. lora,layerlens:0-19")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=OVERRIDES: a baseline with overrides, run as NAME"
    )
    parser.add_argument("--workers", type=int, default=1, help="runs at once")
    parser.add_argument("--deadline-s", type=float, default=float("inf"), help="stop every run after this long")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        help="two baselines compared seed by seed, e.g. layerlens,lora (repeat for more pairs)",
    )
    parser.add_argument("--metrics", default="test/acc,test/f1", help="the test/* metrics tabled and compared")
    parser.add_argument("--out", type=Path, help="results folder (default: a dated one under experiments/results)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/layerlens-paired"), help="run folders and logs")
    parser.add_argument("--analyse", type=Path, metavar="DIR", help="only rewrite DIR's tables from its runs.jsonl")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs that would start, in order (those not FINISHED in --out), and stop",
    )
    parser.add_argument("overrides", nargs="*", help="layerlens.run overrides for every run (after --)")
    args = parser.parse_args()
    try:
        run(args)
    except LayerLensError as err:
        raise SystemExit(f"error: {err}") from None


def run(args) -> None:
    compare, metrics = parse_pairs(args.compare or ["layerlens,lora"]), args.metrics.split(",")
    if args.analyse:
        print(analyse(args.analyse, compare, metrics))
        return
    jobs = [job for spec in args.jobs for job in parse_jobs(spec)]
    variants = parse_variants(args.variant)
    if not jobs:
        raise SystemExit("error: --jobs names no run")
    out = args.out or ROOT / "experiments" / "results" / f"{datetime.now(timezone.utc):%F-%H%M}-paired-seeds"
    done = finished(out)
    jobs = [(baseline, seed) for baseline, seed in jobs if (baseline, str(seed)) not in done]
    if args.dry_run:
        print("\n".join(f"{baseline} s{seed}" for baseline, seed in jobs) or "nothing to run")
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "command.txt", "a") as record:  # one entry per start: a results folder may take several
        record.write(
            f"command: {shlex.join(sys.argv)}\ncommit:  {git_commit()}\n"
            f"started: {datetime.now(timezone.utc):%F %T} UTC, {len(jobs)} runs not yet finished\n"
        )
    start = time.monotonic()
    runner = Runner(
        out,
        args.work,
        args.overrides,
        max(1, (os.cpu_count() or 1) // args.workers),
        start + args.deadline_s,
        variants,
    )
    with ThreadPoolExecutor(args.workers) as pool:
        for outcome in pool.map(runner.run, jobs):
            print(outcome, flush=True)
            if (out / "runs.jsonl").is_file():  # the tables so far, so that a stopped sweep still leaves them
                analyse(out, compare, metrics, strict=False)
    with open(out / "machine.txt", "a") as record:
        record.write(
            "\n".join(
                [
                    *machine(),
                    f"workers: {args.workers} runs at once, {runner.threads} threads each",
                    f"wall time: {time.monotonic() - start:.0f} s",
                    "",
                ]
            )
            + "\n"
        )
    if (out / "runs.jsonl").is_file():
        print(analyse(out, compare, metrics, strict=False))


if __name__ == "__main__":
    main()
