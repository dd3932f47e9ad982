"""Mutation score of the core modules (issue 23): mutmut 3 run on a scratch copy of the tree, one table per run.

    python experiments/mutation.py --out experiments/results/2026-12-06-mutation/final [MODULE ...]

MODULE is a path among `[tool.mutmut] only_mutate` in pyproject.toml (default: all of them); the tests are that
section's `pytest_add_cli_args_test_selection`. mutmut runs each mutant against only the selected tests that call
the mutated function, fastest first, stopping at the first failure.

What it does, and why:
- copies layerlens/, conf/, tests/ and pyproject.toml, as committed at HEAD (`--from worktree`: as they are on disk,
  uncommitted edits included) into a scratch folder, so that edits made meanwhile in the checkout do not leak in;
- puts the compiled `layerlens._rank_alloc` beside the mutated copies: mutmut imports the package from mutants/,
  where nothing builds it;
- starts mutmut with scikit-build-core's editable-install finder removed from sys.meta_path: that finder would
  otherwise import `layerlens` from the checkout, never from mutants/, and every mutant would survive;
- runs at nice 19 with one thread per process (OMP_NUM_THREADS=1);
- writes OUT/summary.md (killed / survived / timeout / no tests per module), OUT/mutants.tsv (every mutant: status,
  line, the change in one line) and OUT/run.json (command, versions, machine, date, duration);
- with `--baseline DIR` (an earlier run's folder): for each mutant that survived there and is killed now (the same
  function and change, in whichever module), the first test to fail on it, in OUT/killers.tsv. The tests
  that passed there pass on it still, so that test is a new or a changed one. Each mutant runs in a fork of one
  warm process, against the tests that call its function, fastest first, up to the first failure.
"""

import argparse
import csv
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
COPIED = ["layerlens", "conf", "tests", "pyproject.toml"]
STATUSES = ["killed", "survived", "timeout", "no tests"]

# The editable install's redirect of `layerlens` (and the checkout on sys.path) removed, so that a process run in a
# scratch copy imports the copy's layerlens.
UNREDIRECT = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ScikitBuildRedirectingFinder"]
sys.path[:] = [p for p in sys.path if p.rstrip("/") != {str(REPO)!r}]
"""
BOOT = (
    UNREDIRECT
    + """
sys.argv[0] = "mutmut"  # mutmut's entry point
from mutmut.__main__ import cli
cli()
"""
)


# Which test fails first on each mutant: run in the scratch folder, argv[1] the mutant names (one a line), argv[2]
# the file for "mutant<TAB>test" lines.
KILLERS = (
    UNREDIRECT
    + """
import json, os, signal
os.chdir("mutants")
sys.path.insert(0, os.getcwd())
import pytest, torch, transformers  # warm: imported once, before the forks
names = open(sys.argv[1]).read().split()
stats = json.load(open("mutmut-stats.json"))
tests_by_function, duration = stats["tests_by_mangled_function_name"], stats["duration_by_test"]
files = sorted({test.split("::")[0] for tests in tests_by_function.values() for test in tests})
pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir=.", *files])  # warm: the test modules too

class First:
    failed = None
    def pytest_runtest_logreport(self, report):
        if report.failed and First.failed is None:
            First.failed = report.nodeid

with open(sys.argv[2], "w") as out:
    for name in names:
        tests = sorted(tests_by_function.get(name.partition("__mutmut_")[0], []), key=lambda t: duration.get(t, 0))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.environ["MUTANT_UNDER_TEST"] = name
            signal.alarm(600)
            pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--rootdir=.", "--tb=no", "--no-header", "-W", "ignore",
                         *tests], plugins=[First()])
            os.write(write, (First.failed or "").encode())
            os._exit(0)
        os.close(write)
        killer = b""
        while chunk := os.read(read, 65536):
            killer += chunk
        os.waitpid(pid, 0)
        out.write(f"{name}\\t{killer.decode() or '(none failed)'}\\n")
        out.flush()
"""
)


def mutmut_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]


def populate(workdir: Path, source: str) -> str:
    """Copy the tree into `workdir`; returns a description of what was copied."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    if source == "HEAD":
        archive = subprocess.run(["git", "archive", "HEAD", *COPIED], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive.stdout, check=True)
        return f"HEAD {head.strip()}"
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", *COPIED],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, workdir / name)
    dirty = subprocess.run(
        ["git", "status", "--short", "--", *COPIED], cwd=REPO, capture_output=True, text=True
    ).stdout.split("\n")
    return (
        f"working tree on HEAD {head.strip()}, changed: {', '.join(entry[3:] for entry in dirty if entry) or 'nothing'}"
    )


def place_extension(workdir: Path) -> None:
    origin = Path(importlib.util.find_spec("layerlens._rank_alloc").origin)
    target = workdir / "mutants" / "layerlens" / origin.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(origin, target)


def one_line(diff: str) -> str:
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return f"{' / '.join(removed) or '(nothing)'}  →  {' / '.join(added) or '(removed)'}"


def changed_line(diff: str, source_lines: list[str], function: str) -> int | None:
    """The source line of the mutant's first removed line, searched from the mutated function's `def`."""
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    if not removed:
        return None
    start = next((i for i, line in enumerate(source_lines) if line.lstrip().startswith(f"def {function}(")), 0)
    for i in range(start, len(source_lines)):
        if source_lines[i].strip() == removed[0]:
            return i + 1
    return None


def collect(workdir: Path, modules: list[str]) -> list[dict]:
    os.chdir(workdir)  # mutmut reads its config and mutants/ relative to the working directory
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    rows = []
    for module in modules:
        data = SourceFileMutationData(path=module)
        data.load()
        source_lines = Path(module).read_text().splitlines()
        for name, code in sorted(data.exit_code_by_key.items(), key=lambda kv: _order(kv[0])):
            diff = get_diff_for_mutant(name, path=module)
            function = orig_function_and_class_names_from_key(name)[0].rpartition(".")[-1]
            rows.append(
                {
                    "module": module,
                    "mutant": name,
                    "status": status_by_exit_code[code],
                    "line": changed_line(diff, source_lines, function) or "",
                    "change": one_line(diff),
                }
            )
    return rows


def _order(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def same_mutant(row: dict) -> tuple[str, str]:
    """A mutant as it is known across runs: its function's mangled name and the change, but neither its module (a
    function moved to methods/layers/ keeps its mutants) nor its number (which an edit elsewhere in the function
    shifts)."""
    return row["mutant"].rpartition(".")[2].partition("__mutmut_")[0], row["change"]


def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def summary(rows: list[dict], modules: list[str]) -> str:
    lines = [
        "| module | mutants | killed | survived | timeout | no tests | other | % killed | % killed or timeout |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for module in [*modules, "all"]:
        counts = Counter(r["status"] for r in rows if module in ("all", r["module"]))
        total = sum(counts.values())
        other = total - sum(counts[s] for s in STATUSES)

        def pct(n: int, total: int = total) -> str:
            return f"{100 * n / total:.1f}" if total else "-"

        lines.append(
            f"| {module} | {total} | {counts['killed']} | {counts['survived']} | {counts['timeout']} | "
            f"{counts['no tests']} | {other} | {pct(counts['killed'])} | "
            f"{pct(counts['killed'] + counts['timeout'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    config = mutmut_config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="paths among [tool.mutmut] only_mutate (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.md, mutants.tsv, run.json")
    parser.add_argument("--from", dest="source", choices=["HEAD", "worktree"], default="HEAD")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/layerlens-mutation"))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="an earlier run's folder: name the test that kills each of its survivors killed now (OUT/killers.tsv)",
    )
    args = parser.parse_args()
    modules = args.modules or config["only_mutate"]
    unknown = [m for m in modules if m not in config["only_mutate"]]
    if unknown:
        parser.error(f"not in [tool.mutmut] only_mutate: {', '.join(unknown)}")
    out = args.out.resolve()
    workdir = args.workdir.resolve()
    baseline = args.baseline.resolve() if args.baseline else None

    copied = populate(workdir, args.source)
    place_extension(workdir)
    globs = [m.removesuffix(".py").replace("/", ".") + ".*" for m in modules]
    command = ["nice", "-n", "19", sys.executable, "-c", BOOT, "run", "--max-children", str(args.max_children), *globs]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = datetime.datetime.now().astimezone()
    clock = time.perf_counter()
    with open(workdir / "mutmut.log", "w") as log:
        done = subprocess.run(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - clock
    if done.returncode != 0:
        sys.exit(f"mutmut exited with {done.returncode}; see {workdir / 'mutmut.log'}")

    rows = collect(workdir, modules)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary(rows, modules))
    with open(out / "mutants.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["module", "line", "status", "mutant", "change"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    load = os.getloadavg()
    (out / "run.json").write_text(
        json.dumps(
            {
                "command": ["python", "experiments/mutation.py", *sys.argv[1:]],
                "mutmut_command": "nice -n 19 mutmut run --max-children "
                f"{args.max_children} {' '.join(globs)}  (OMP_NUM_THREADS=1)",
                "modules": modules,
                "tests": config["pytest_add_cli_args_test_selection"],
                "copied": copied,
                "started": started.isoformat(timespec="seconds"),
                "seconds": round(seconds),
                "load_average_at_end": [round(x, 2) for x in load],
                "mutmut": version("mutmut"),
                "python": platform.python_version(),
                "torch": version("torch"),
                "transformers": version("transformers"),
                "peft": version("peft"),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            },
            indent=2,
        )
        + "\n"
    )
    if baseline:
        survived = {same_mutant(r) for r in _read_tsv(baseline / "mutants.tsv") if r["status"] != "killed"}
        now_killed = [r["mutant"] for r in rows if same_mutant(r) in survived and r["status"] == "killed"]
        (workdir / "killers.in").write_text("\n".join(now_killed) + "\n")
        subprocess.run(
            ["nice", "-n", "19", sys.executable, "-c", KILLERS, str(workdir / "killers.in"), str(out / "killers.tsv")],
            cwd=workdir,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    print(summary(rows, modules), end="")
    print(f"{seconds:.0f} s; every mutant in {out / 'mutants.tsv'}")


if __name__ == "__main__":
    main()
