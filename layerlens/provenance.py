"""Where a result came from: the code's git commit, the native build, and the machine it ran on.

python -m layerlens.provenance > machine.txt     # the machine description, one `key: value` a line
"""

import functools
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from layerlens.paths import PACKAGE_DIR

# The libraries whose versions change what a run computes or how fast: named in every machine description.
PACKAGES = ("torch", "transformers", "peft", "lightning", "numpy", "scipy")


@functools.cache
def git_commit() -> str:
    """The checkout's HEAD when this process first asks (the code it loaded), `-dirty` with uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def native_build() -> str:
    from layerlens import _rank_alloc

    return _rank_alloc.build_info()


def machine(packages: tuple[str, ...] = PACKAGES, load: bool = True) -> list[str]:
    """The machine a measurement ran on, one `key: value` line each: date, CPU, memory, load (unless `load` is
    False: a caller that samples it itself), GPU, Python and `packages`' versions, the native build, the commit."""
    system = f"{platform.machine()}, {platform.system()} {platform.release()}"
    lines = [
        f"date (UTC): {datetime.now(timezone.utc):%F %T}",
        f"cpu: {_cpu_model()} x {os.cpu_count()} logical cores ({system})",
        f"memory: {_memory_gib()}",
    ]
    if load:
        lines.append("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    versions = [f"{name} {_version(name)}" for name in packages]
    return [
        *lines,
        f"gpu: {_gpus()}",
        " | ".join([f"python {platform.python_version()}", *versions]),
        f"native build: {native_build()}",
        f"commit: {git_commit()}",
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> str:
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        return "unknown"


def _gpus() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none (torch.cuda.is_available() is False)"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return ", ".join(f"{name} x {names.count(name)}" for name in dict.fromkeys(names))


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    print("\n".join(machine()))
