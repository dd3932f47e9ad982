"""What every Hydra entry point shares: argument pre-checks and one-line errors."""

import functools
import shlex
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from layerlens.errors import LayerLensError
from layerlens.paths import CONF_DIR
from layerlens.training.resume import Interrupted

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
