"""Shared fixtures and helpers.

Hypothesis profiles: the property and fuzz tests draw the same cases on every run ("repeatable", the default), so
that CI passes or fails on the code alone, and a tenth as many as under "explore" (see `examples`), which draws new
cases each time:

    python -m pytest --hypothesis-profile=explore -m slow      # or: HYPOTHESIS_PROFILE=explore python -m pytest

Entry points: each path through an entry point (`python -m layerlens.run`, `.plan`, `.report`, `.evaluate`, an
error exit, a signal, DDP, the joblib launcher) runs in a subprocess once, as a user would call it (`run_module`);
other tests call the same module in-process (`call_module`: the module run as `__main__` with the arguments in
sys.argv, its exit status and output collected as a subprocess's would be), which costs no interpreter start and
no imports.
"""

import logging
import os
import runpy
import sqlite3
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hypothesis import settings

from layerlens.paths import CONF_DIR

settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One thread per xdist worker, and per process it starts: the workers share the cores (one per core by
        # default), and tiny models gain nothing from more threads than that.
        os.environ["OMP_NUM_THREADS"] = "1"
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
    # Here, not when this file is imported: the test modules import it again (as tests.conftest), after pytest
    # loaded --hypothesis-profile, and loading a profile then would undo the option.
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


# Under the default profile a property test draws this share of the cases that it draws under "explore".
DEFAULT_SHARE = 10


def examples(explore: int) -> int:
    """max_examples for a property test: `explore` under the explore profile, a tenth of it (at least 20) else.
    Call it when the test module is imported: pytest's --hypothesis-profile is loaded by then."""
    if settings.get_current_profile_name() == "explore":
        return explore
    return max(20, explore // DEFAULT_SHARE)


REPO = Path(__file__).resolve().parent.parent
TINY = ["model=tiny", "trainer=debug"]


def compose_config(config_name: str = "run", overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created and migrated once: a fresh store's migrations take seconds. The
    creation itself, with processes racing to do it, is tested in test_parallel_sweep.py with stores of its own."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def copy_store(template: Path, path: Path) -> str:
    """A copy of the empty store at `path` (a consistent copy, through SQLite's backup); its tracking URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source, target = sqlite3.connect(template), sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return f"sqlite:///{path}"


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch, store_template):
    uri = copy_store(store_template, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def compose_run(tracking_uri):
    """A run config on the tiny model with few batches, tracked in a temporary MLflow store."""

    def make(*overrides: str):
        return compose_config("run", [*TINY, *overrides])

    return make


def run_module(module: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m layerlens.<module> args` in a subprocess, as a user would call it."""
    return subprocess.run(
        [sys.executable, "-m", f"layerlens.{module}", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_main(target: str | Path, *args: str) -> int:
    """Run `target` (a module's name, or a script's path) as `__main__` with `args` in sys.argv, as the interpreter
    does: its exit status, and an exit message or an uncaught exception's traceback on stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    argv = sys.argv
    try:
        with warnings.catch_warnings():
            # runpy's note that layerlens.<module> is imported already (the tests import it): it is run afresh.
            warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
            sys.argv = [str(target), *args]
            if isinstance(target, Path):
                runpy.run_path(str(target), run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.argv = argv
        # Hydra configures logging for the job (handlers on the root logger, a file in the run's folder) and
        # leaves its config behind: close what it added and put back pytest's handlers.
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None


@pytest.fixture
def call_module(monkeypatch, capsys):
    """`call_module(module, *args, cwd=..., env=...)`: `python -m layerlens.<module> args` in this process (or
    `python <script> args`, given the script's Path), with the environment and working directory set for the call
    only; a CompletedProcess, as run_module returns."""

    def call(module: str | Path, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
        capsys.readouterr()  # what the test printed before
        with monkeypatch.context() as patch:
            patch.chdir(cwd)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            code = run_main(module if isinstance(module, Path) else f"layerlens.{module}", *args)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([str(module), *args], code, out, err)

    return call
