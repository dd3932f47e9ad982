import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import settings

from layerlens.paths import CONF_DIR

# The property and fuzz tests draw the same cases on every run, so that CI passes or fails on the code alone;
# `python -m pytest --hypothesis-profile=explore` draws new ones.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")

REPO = Path(__file__).resolve().parent.parent
TINY = ["model=tiny", "trainer=debug"]


def compose_config(config_name: str = "run", overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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
