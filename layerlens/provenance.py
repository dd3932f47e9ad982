"""Where a result came from: the code's git commit and the native build."""

import functools
import subprocess

from layerlens.paths import PACKAGE_DIR


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
