"""What every Hydra entry point shares: argument pre-checks and one-line errors."""

import functools
import shlex
import signal
import sys
import threading
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from layerlens.errors import LayerLensError
from layerlens.paths import CONF_DIR
from layerlens.training.resume import SIGNALS, SWEEP_STOP_FILE, Interrupted, request_sweep_stop, sweep_stop_requested

# conf/run.yaml's hydra.sweep.dir: resume_sweep's folder where given, else a new one.
OmegaConf.register_new_resolver(
    "layerlens.unless_null", lambda value, otherwise: otherwise if value is None else value, replace=True
)

_FLAGS_WITH_VALUE = {
    "-cn",
    "--config-name",
    "-cp",
    "--config-path",
    "-cd",
    "--config-dir",
    "-c",
    "--cfg",
    "-p",
    "--package",
}


def one_line_errors(task_function):
    """Bad input ends the program with `error: <what is wrong>` and a non-zero exit, no traceback."""

    @functools.wraps(task_function)
    def wrapped(*args, **kwargs):
        try:
            return task_function(*args, **kwargs)
        except LayerLensError as err:
            raise SystemExit(f"error: {err}") from None
        except Interrupted as err:  # the MLflow run is closed KILLED; exit 128 + the signal's number, as shells do
            print(f"interrupted: {err}{resume_hint(err)}", file=sys.stderr)
            raise SystemExit(128 + err.signum) from None

    return wrapped


def resume_hint(err: Interrupted) -> str:
    if err.checkpoint is None:
        return ""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    words = [w for w in overrides if not w.startswith("resume=")] + [f"resume={err.output_dir}"]
    return f"; resume with: python -m layerlens.run {shlex.join(words)}"


def check_group_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Fail in one line on `group=option` overrides naming an option that conf/<group>/ lacks."""
    words, skip = [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE and not skip
            continue
        words.append(arg)
    try:
        overrides = OverridesParser.create().parse_overrides(words)
    except Exception:  # malformed overrides: Hydra reports those itself
        return
    for override in overrides:
        group = conf_dir / override.key_or_group
        # hydra/* groups also hold the plugins' options (joblib, submitit_slurm, ...): Hydra checks those itself.
        if (
            override.is_delete()
            or not group.is_dir()
            or override.package is not None
            or override.key_or_group.startswith("hydra/")
        ):
            continue
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        available = sorted(p.stem for p in group.glob("*.yaml"))
        for value in values:
            if value not in available and value != "null":
                raise SystemExit(
                    f"error: unknown {override.key_or_group} {value!r} (choose from: {', '.join(available)})"
                )


def main_guard(main, groups: bool = True) -> None:
    """Run a Hydra main; `groups`: whether its config composes conf/'s groups (an entry point whose config does not,
    such as layerlens.predict, may have a key named as a group: model=<folder>)."""
    if groups:
        check_group_choices(sys.argv[1:])
    main()


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def sweep_id() -> str | None:
    """The multirun's folder name (conf: hydra.sweep.dir), shared by every run of one sweep."""
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None


def sweep_stop_file() -> Path | None:
    """In a sweep, the file by which the process that launched it asks its runs to stop (SweepStop)."""
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir) / SWEEP_STOP_FILE if hydra_cfg.mode == RunMode.MULTIRUN else None


class SweepStop(Callback):
    """A Hydra callback (conf/run.yaml) for the process that launches a sweep (-m). The first SIGINT or SIGTERM it
    receives asks every run of the sweep, in this process or in the launcher's workers (joblib), to stop after its
    batch at hand with a checkpoint (its MLflow run KILLED), and no further run to start: it writes the signal's number
    to the sweep folder's SWEEP_STOP_FILE, which the runs read (a run that receives the signal itself writes it too).
    When the sweep has ended so, it prints the command that finishes the sweep (resume_sweep) and exits 128 + the
    signal's number; a second signal stops everything at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stop_file: Path | None = None
        self.previous: dict = {}
        self.resume_words: list[str] = []

    def on_multirun_start(self, config, **kwargs) -> None:
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            return
        sweep_dir = str(config.hydra.sweep.dir)
        self.signum, self.stop_file = None, Path(sweep_dir) / SWEEP_STOP_FILE
        self.stop_file.unlink(missing_ok=True)  # a resumed sweep's earlier stop
        overrides = [*config.hydra.overrides.hydra, *config.hydra.overrides.task]
        self.resume_words = [w for w in overrides if not w.startswith(("resume_sweep=", "hydra.mode="))] + [
            f"resume_sweep={sweep_dir}"
        ]
        self.previous = {signum: signal.signal(signum, self._on_signal) for signum in SIGNALS}

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None or self.stop_file is None:
            raise KeyboardInterrupt
        self.signum = signum
        request_sweep_stop(self.stop_file, signum)
        print(
            f"{signal.Signals(signum).name}: the sweep's runs stop after their batch at hand, with checkpoints, and no "
            "other run starts (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def on_multirun_end(self, config, **kwargs) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        signum = sweep_stop_requested(self.stop_file)  # this process's signal, or one that a run of the sweep received
        if signum is None:
            return
        print(
            f"interrupted: {signal.Signals(signum).name} received; the sweep's unfinished runs stopped; "
            f"finish the sweep with: python -m layerlens.run -m {shlex.join(self.resume_words)}",
            file=sys.stderr,
        )
        raise SystemExit(128 + signum)
