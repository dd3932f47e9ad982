"""Many seeds of each baseline, run side by side, and the seed-by-seed comparison of two of them.

    python experiments/paired_seeds.py --jobs lora,layerlens:0-19 --jobs full_ft,adalora:0-9 --workers 8 \
        --deadline-s 480 [-- extra layerlens.run overrides]

Each (baseline, seed) is one `python -m layerlens.run` process with `logger=jsonl`; `--workers` of them run at once
(jobs in the order given, seed by seed, so pairs finish together). At the deadline the runs still going are stopped
and left out. Each run appends its line to runs.jsonl as it ends, and a run already FINISHED there is not run again:
start the same command with the same --out to go on where an earlier one stopped. Writes experiments/results/<date>-<UTC time>-paired-seeds/ (or --out): runs.jsonl (one line per run),
results.md and results.csv (per baseline: seeds, mean and sample std of the eval split's metrics; per seed: the
--compare pair (or pairs) side by side, their differences, win / tie / loss counts and Wilcoxon's signed-rank test), the
command and the machine. `--analyse DIR` rewrites the tables of DIR's runs.jsonl without running anything.
"""

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean, stdev

from scipy.stats import wilcoxon

from layerlens.data.tasks import TaskSpec

ROOT = Path(__file__).resolve().parent.parent


def parse_jobs(spec: str) -> list[tuple[str, int]]:
    """'lora,layerlens:0-19' or 'full_ft:0,2,5' -> [(baseline, seed), ...], seed by seed."""
    baselines, _, seeds = spec.partition(":")
    if not baselines or not seeds:
        raise SystemExit(f"error: --jobs must be BASELINE[,BASELINE...]:SEEDS, got {spec!r}")
    numbers: list[int] = []
    for part in seeds.split(","):
        first, _, last = part.partition("-")
        numbers += range(int(first), int(last or first) + 1)
    return [(baseline, seed) for seed in numbers for baseline in baselines.split(",")]


def machine() -> list[str]:
    import torch

    lines = [
        f"date (UTC): {datetime.now(timezone.utc):%F %T}",
        f"cpu: {platform.processor() or platform.machine()} x {os.cpu_count()} cores",
        f"python {platform.python_version()} | torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name(0)}")
    return lines


class Runner:
    def __init__(self, out: Path, work: Path, overrides: list[str], threads: int, deadline: float):
        self.out, self.work, self.overrides, self.threads, self.deadline = out, work, overrides, threads, deadline

    def run(self, job: tuple[str, int]) -> str:
        baseline, seed = job
        if time.monotonic() > self.deadline:
            return f"{baseline} s{seed}: not started (deadline)"
        name = f"{baseline}-s{seed}"
        cmd = [sys.executable, "-m", "layerlens.run", f"baseline={baseline}", f"seed={seed}", "logger=jsonl",
               f"logger.path={self.out / 'runs.jsonl'}", "trainer.enable_progress_bar=false",
               f"hydra.run.dir={self.work / name}", *self.overrides]
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


def load_runs(path: Path) -> dict[str, dict[int, dict]]:
    """FINISHED runs by baseline and seed (a later line for the same pair replaces an earlier one)."""
    runs: dict[str, dict[int, dict]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["status"] == "FINISHED":
            runs.setdefault(record["tags"]["baseline"], {})[int(record["tags"]["seed"])] = record
    return runs


def summary(values: list[float], digits: int = 4) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "–"
    return f"{mean(values):.{digits}f} ± {stdev(values):.{digits}f}"


def analyse(out: Path, compares: list[tuple[str, str]], metric_names: list[str]) -> str:
    runs = load_runs(out / "runs.jsonl")
    if not runs:
        raise SystemExit(f"error: {out / 'runs.jsonl'} holds no finished run")
    task = next(iter(next(iter(runs.values())).values()))["config"]["task"]
    lines = [f"Task {task['name']}: test/* on its {task.get('test_split', TaskSpec.test_split)!r} split, read once "
             f"with the checkpoint chosen by {task.get('headline_metric', TaskSpec.headline_metric)} on the selection "
             f"split ({task.get('selection_split', TaskSpec.selection_split)}); mean ± sample std over the seeds each "
             "baseline finished.", ""]
    header = ["baseline", "seeds", "n", *metric_names, "trainable params", "train s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv = ["baseline,seed," + ",".join(metric_names) + ",params/trainable,time/train_s"]
    for baseline, by_seed in runs.items():
        seeds = sorted(by_seed)
        cols = [summary([by_seed[s]["metrics"][m] for s in seeds]) for m in metric_names]
        params = sorted({int(by_seed[s]["metrics"]["params/trainable"]) for s in seeds})
        lines.append(f"| {baseline} | {seeds[0]}–{seeds[-1]} | {len(seeds)} | " + " | ".join(cols)
                     + f" | {params[0]:,}" + (f"–{params[-1]:,}" if len(params) > 1 else "")
                     + f" | {summary([by_seed[s]['metrics']['time/train_s'] for s in seeds], digits=1)} |")
        csv += [f"{baseline},{s}," + ",".join(f"{by_seed[s]['metrics'][m]:.6f}" for m in metric_names)
                + f",{int(by_seed[s]['metrics']['params/trainable'])},{by_seed[s]['metrics']['time/train_s']:.1f}"
                for s in seeds]
    for a, b in compares:
        paired = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
        if paired:
            lines += ["", f"Seed by seed, {a} against {b} ({len(paired)} seeds both finished):", ""]
            lines += ["| seed | " + " | ".join(f"{a} {m} | {b} {m}" for m in metric_names) + " |",
                      "|---|" + "---|---|" * len(metric_names)]
            for s in paired:
                lines.append(f"| {s} | " + " | ".join(
                    f"{runs[a][s]['metrics'][m]:.4f} | {runs[b][s]['metrics'][m]:.4f}" for m in metric_names) + " |")
            lines += ["", f"| metric | mean ± sample std of {a} − {b} | {a} higher / tie / lower "
                      "| Wilcoxon signed-rank p (two-sided) |", "|---|---|---|---|"]
            for m in metric_names:
                diffs = [runs[a][s]["metrics"][m] - runs[b][s]["metrics"][m] for s in paired]
                wins, ties = sum(d > 1e-9 for d in diffs), sum(abs(d) <= 1e-9 for d in diffs)
                p = wilcoxon(diffs).pvalue if len(paired) > 1 and any(abs(d) > 1e-9 for d in diffs) else float("nan")
                lines.append(f"| {m} | {summary(diffs)} | {wins} / {ties} / {len(diffs) - wins - ties} | {p:.3g} |")
            both = sum(all(runs[a][s]["metrics"][m] >= runs[b][s]["metrics"][m] - 1e-9 for m in metric_names)
                       for s in paired)
            lines += ["", f"{a} at or above {b} in every metric at {both} of {len(paired)} seeds."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.csv").write_text("\n".join(csv) + "\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", action="append", default=[], help="BASELINES:SEEDS, e.g. lora,layerlens:0-19")
    parser.add_argument("--workers", type=int, default=1, help="runs at once")
    parser.add_argument("--deadline-s", type=float, default=float("inf"), help="stop every run after this long")
    parser.add_argument("--compare", action="append", default=[],
                        help="two baselines compared seed by seed, e.g. layerlens,lora (repeat for more pairs)")
    parser.add_argument("--metrics", default="test/acc,test/f1", help="the metrics tabled and compared")
    parser.add_argument("--out", type=Path, help="results folder (default: a dated one under experiments/results)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/layerlens-paired"), help="run folders and logs")
    parser.add_argument("--analyse", type=Path, metavar="DIR", help="only rewrite DIR's tables from its runs.jsonl")
    parser.add_argument("overrides", nargs="*", help="layerlens.run overrides for every run (after --)")
    args = parser.parse_args()
    compare = [tuple(pair.split(",")) for pair in args.compare or ["layerlens,lora"]]
    if any(len(pair) != 2 for pair in compare):
        raise SystemExit(f"error: --compare must name two baselines, got {args.compare!r}")
    if args.analyse:
        print(analyse(args.analyse, compare, args.metrics.split(",")))
        return
    jobs = [job for spec in args.jobs for job in parse_jobs(spec)]
    if not jobs:
        raise SystemExit("error: --jobs names no run")
    out = args.out or ROOT / "experiments" / "results" / f"{datetime.now(timezone.utc):%F-%H%M}-paired-seeds"
    out.mkdir(parents=True, exist_ok=True)
    done = load_runs(out / "runs.jsonl") if (out / "runs.jsonl").is_file() else {}
    jobs = [(baseline, seed) for baseline, seed in jobs if seed not in done.get(baseline, {})]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    with open(out / "command.txt", "a") as record:  # one entry per start: a results folder may take several
        record.write(f"command: {shlex.join(sys.argv)}\ncommit:  {commit or 'unknown'}\n"
                     f"started: {datetime.now(timezone.utc):%F %T} UTC, {len(jobs)} runs not yet finished\n")
    start = time.monotonic()
    runner = Runner(out, args.work, args.overrides, max(1, (os.cpu_count() or 1) // args.workers),
                    start + args.deadline_s)
    with ThreadPoolExecutor(args.workers) as pool:
        for outcome in pool.map(runner.run, jobs):
            print(outcome, flush=True)
            if (out / "runs.jsonl").is_file():  # the tables so far, so that a stopped sweep still leaves them
                analyse(out, compare, args.metrics.split(","))
    with open(out / "machine.txt", "a") as record:
        record.write("\n".join([*machine(), f"workers: {args.workers} runs at once, {runner.threads} threads each",
                                 f"wall time: {time.monotonic() - start:.0f} s", ""]) + "\n")
    print(analyse(out, compare, args.metrics.split(",")))


if __name__ == "__main__":
    main()
