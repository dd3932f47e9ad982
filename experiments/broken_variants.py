"""The broken variants that issue 23 named (and a few of the same kind), each run against the tests that should catch
it: which test fails first, or that none does.

    python experiments/broken_variants.py [--out experiments/results/<date>-broken-variants] [NAME ...]

Each variant is one textual change to a module, made in a scratch copy of HEAD (as experiments/mutation.py copies
it, with the compiled allocator beside it and the editable install's redirect of `layerlens` removed); its tests run
with `-x`, so the first failure names the test that catches it. HEAD itself is run first against every selection:
all of them must pass there, or a failure below would say nothing. Writes OUT/README.md (the table, the command,
the commit) and OUT/variants.tsv.
"""

import argparse
import importlib.util
import platform
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mutation import UNREDIRECT, populate

REPO = Path(__file__).resolve().parent.parent
PREFIX, CACHE = "layerlens/methods/layers/prefix.py", "layerlens/training/frozen_bottom.py"


@dataclass(frozen=True)
class Variant:
    name: str
    module: str
    old: str
    new: str
    tests: tuple[str, ...]


VARIANTS = [
    Variant(
        "prefix (BERT): attention scale 1.0 in place of self.scaling",
        PREFIX,
        "        dropout_p=self.dropout.p if self.training else 0.0,\n        scale=self.scaling,",
        "        dropout_p=self.dropout.p if self.training else 0.0,\n        scale=1.0,",
        ("tests/test_prefix_reference.py",),
    ),
    Variant(
        "prefix (decoder): attention scale 1.0 in place of self.scaling",
        PREFIX,
        "        dropout_p=self.attention_dropout if self.training else 0.0,\n        scale=self.scaling,",
        "        dropout_p=self.attention_dropout if self.training else 0.0,\n        scale=1.0,",
        ("tests/test_decoders.py",),
    ),
    Variant(
        "prefix (BERT): its keys split into heads in the wrong order",
        PREFIX,
        "torch.cat([split(prefix.keys).expand(batch, -1, -1, -1), split(self.key(",
        "torch.cat([prefix.keys.unflatten(-1, (size, heads)).transpose(-1, -2).transpose(-3, -2)"
        ".expand(batch, -1, -1, -1), split(self.key(",
        ("tests/test_prefix_reference.py",),
    ),
    Variant(
        "prefix (BERT): its values split into heads in the wrong order",
        PREFIX,
        "torch.cat([split(prefix.values).expand(batch, -1, -1, -1), split(self.value(",
        "torch.cat([prefix.values.unflatten(-1, (size, heads)).transpose(-1, -2).transpose(-3, -2)"
        ".expand(batch, -1, -1, -1), split(self.value(",
        ("tests/test_prefix_reference.py",),
    ),
    Variant(
        "frozen-layer cache: the cached bottom computed without eval mode (with dropout)",
        CACHE,
        "with eval_mode([self.embeddings, *self.bottom]):",
        "with eval_mode([]):",
        ("tests/test_frozen_bottom_reference.py", "tests/test_frozen_bottom.py"),
    ),
    Variant(
        "profiling: the gradient's squared norm reported as its norm (no square root)",
        "layerlens/lens/profiling.py",
        "np.sqrt(per_site[:, 0])",
        "per_site[:, 0]",
        ("tests/test_profiling_reference.py",),
    ),
    Variant(
        "cost model: the frozen-layer cache ignored in Depth.fraction",
        "layerlens/planning/costs.py",
        "below = lowest / self.epochs if self.cached else lowest",
        "below = lowest",
        ("tests/test_costs_reference.py",),
    ),
    Variant(
        "adapter: its branch detached (no gradient reaches down or up)",
        "layerlens/methods/layers/adapter.py",
        "return x + self.up(self.act(self.down(x)))",
        "return x + self.up(self.act(self.down(x))).detach()",
        ("tests/test_methods.py",),
    ),
    Variant(
        "LoRA: per-site scaling (alpha_pattern) dropped",
        "layerlens/methods/lora.py",
        "alpha_pattern={re.escape(key): ratio * r for key, r in ranks.items()},",
        "alpha_pattern={},",
        ("tests/test_backbones.py", "tests/test_peft_methods.py"),
    ),
    Variant(
        "plan.json: a method its site does not accept attached without complaint",
        "layerlens/lens/apply.py",
        "if c.method not in names:",
        "if False:",
        ("tests/test_method_menu.py", "tests/test_planning.py"),
    ),
    Variant(
        "resume: the samples already seen in the cut epoch trained again",
        "layerlens/training/resume.py",
        "return iter(order[skip:])",
        "return iter(order)",
        ("tests/test_resume.py",),
    ),
]

RUN = (
    UNREDIRECT
    + """
sys.path.insert(0, ".")
import pytest
sys.exit(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--tb=line", "--no-header", "-W", "ignore", *sys.argv[1:]]))
"""
)


def one_line(code: str) -> str:
    return " ".join(code.split())


def run_tests(workdir: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """pytest's exit status on `tests` in `workdir`, and its first failing test (or its last line of output)."""
    done = subprocess.run(
        [sys.executable, "-c", RUN, *tests],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in done.stdout.splitlines() if line.startswith("FAILED ")]
    lines = done.stdout.strip().splitlines()
    return done.returncode, failed[0] if failed else (lines[-1] if lines else done.stderr[-300:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="variants to run (a substring of their name; default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "experiments" / "results" / f"{datetime.now(timezone.utc):%Y-%m-%d}-broken-variants",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/layerlens-broken-variants"))
    args = parser.parse_args()
    chosen = [v for v in VARIANTS if not args.names or any(n in v.name for n in args.names)]
    copied = populate(args.work, "HEAD")
    extension = Path(importlib.util.find_spec("layerlens._rank_alloc").origin)
    shutil.copy2(extension, args.work / "layerlens" / extension.name)
    selections = sorted({t for v in chosen for t in v.tests})
    status, last = run_tests(args.work, tuple(selections))
    if status != 0:
        sys.exit(f"HEAD fails its own selection ({last}): fix that first")
    rows = []
    for variant in chosen:
        path = args.work / variant.module
        source = path.read_text()
        if source.count(variant.old) != 1:
            sys.exit(f"{variant.name}: {variant.old!r} occurs {source.count(variant.old)} times in {variant.module}")
        path.write_text(source.replace(variant.old, variant.new))
        try:
            status, caught_by = run_tests(args.work, variant.tests)
        finally:
            path.write_text(source)
        rows.append((variant, "caught" if status == 1 else f"NOT caught (pytest exit {status})", caught_by))
        print(f"{variant.name}: {rows[-1][1]}: {caught_by}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "variants.tsv").open("w") as out:
        out.write("variant\tmodule\ttests run\tverdict\tfirst failing test\n")
        for variant, verdict, caught_by in rows:
            out.write(f"{variant.name}\t{variant.module}\t{' '.join(variant.tests)}\t{verdict}\t{caught_by}\n")
    table = "\n".join(
        f"| {v.name} | `{v.module}`: `{one_line(v.old)}` → `{one_line(v.new)}` | {verdict} | `{caught}` |"
        for v, verdict, caught in rows
    )
    (args.out / "README.md").write_text(
        "# Broken variants against the suite (issue 23)\n\n"
        f"Command: `{shlex.join(['python', *sys.argv])}` on {copied}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}.\n\n"
        f"HEAD passes every selection ({', '.join(selections)}). Each variant is one change to a scratch copy of "
        "HEAD; its tests run with `-x`: the first failing test is the one that catches it.\n\n"
        "| variant | change | verdict | first failing test |\n|---|---|---|---|\n" + table + "\n"
    )


if __name__ == "__main__":
    main()
