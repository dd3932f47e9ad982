"""Stopping a run on SIGINT/SIGTERM with a checkpoint, and resuming it from that checkpoint exactly.

The run stops at a batch boundary (never mid-step or mid-validation) and saves a full Lightning checkpoint
(weights, optimiser, scheduler, loops) plus what Lightning leaves out: the global RNG states (dropout) and
where the epoch's shuffled order had got to. Resuming from it replays the same batches with the same
random numbers, so the run ends as it would have without the interruption. The callback that stops the run and
keeps that state in its checkpoint is Interruption (callbacks.py); what it needs, and the rest of resuming, is here.
"""

import json
import random
import shutil
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from layerlens.data.selection import TRAIN
from layerlens.errors import LayerLensError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RUN_RECORD = "run.json"  # in the output folder: the MLflow run id and the config, for resuming
# In a sweep's folder, once the process that launched the sweep received SIGINT or SIGTERM: the signal's number, which
# asks every run of the sweep to stop as that signal would (cli.SweepStop).
SWEEP_STOP_FILE = "interrupted"
NOT_COMPARED = ("resume", "resume_sweep")  # what says how a run was started, not what it computes


@contextmanager
def resume_warning_silenced():
    """Lightning warns about any mid-epoch resume of a DataLoader it cannot restore itself; EpochShuffle is restored
    here, so within this block that warning is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        yield


def interrupt_checkpoint(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints" / "last.ckpt"


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal (MLflow marks it KILLED); `checkpoint` is where it can resume from, if anywhere."""

    def __init__(self, signum: int, output_dir: Path, checkpoint: Path | None):
        super().__init__(signum)
        self.signum, self.output_dir, self.checkpoint = signum, output_dir, checkpoint

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.checkpoint is None:
            return f"{name} received before training had a checkpoint to save; nothing to resume"
        return f"{name} received; training state saved to {self.checkpoint}"


def rng_states() -> dict:
    """The global RNG states (torch, CUDA, numpy, Python) as types that `torch.load(weights_only=True)` reads."""
    # legacy (the default): a tuple, as the global generator is always MT19937
    kind, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])


class EpochShuffle(Sampler[int]):
    """A random order per epoch drawn from (seed, epoch) alone, not from the global RNG, that can start part-way
    through: the next pass skips `skip` samples of epoch `epoch`'s order. Lightning calls `set_epoch` per epoch."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        skip, self.skip = self.skip, 0
        return iter(order[skip:])


def shuffled_train_loader(data, seed: int) -> DataLoader:
    """The datamodule's training batches in an EpochShuffle order (same rows, batch size and collation)."""
    rows = data.tokenised[TRAIN]
    return DataLoader(
        rows,
        batch_size=data.batch_size,
        sampler=EpochShuffle(len(rows), seed),
        collate_fn=data.collate,
        num_workers=data.num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def sweep_stop_requested(stop_file: Path | None) -> int | None:
    """The signal that the process which launched this run's sweep received (its SWEEP_STOP_FILE), asking the run,
    in that process or in one of the launcher's workers, to stop as that signal would stop it; None if not asked."""
    if stop_file is None:
        return None
    try:
        return int(Path(stop_file).read_text())
    except (FileNotFoundError, ValueError):  # not asked (yet)
        return None


def request_sweep_stop(stop_file: Path, signum: int) -> None:
    """Ask every run of the sweep whose SWEEP_STOP_FILE this is to stop as `signum` would stop it."""
    stop_file.parent.mkdir(parents=True, exist_ok=True)
    written = stop_file.with_suffix(".tmp")
    written.write_text(str(signum))
    written.replace(stop_file)  # whole, at once: a run never reads half of it


def _recorded_config(cfg: DictConfig) -> dict:
    config = cast(dict, OmegaConf.to_container(cfg, resolve=True))
    for key in NOT_COMPARED:
        config.pop(key, None)
    return config


def _comparable(cfg: DictConfig) -> dict[str, object]:
    return _flat(_recorded_config(cfg))


def write_run_record(output_dir: Path, run_id: str | None, cfg: DictConfig) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    record = {"mlflow_run_id": run_id, "config": _recorded_config(cfg)}
    (Path(output_dir) / RUN_RECORD).write_text(json.dumps(record, indent=1, default=str))


def record_finished(output_dir: Path, headline: float) -> None:
    """The run in output_dir finished, with this headline metric (what run_experiment returned): a resumed sweep
    (resume_sweep) does not run it again."""
    path = Path(output_dir) / RUN_RECORD
    record = json.loads(path.read_text())
    record["finished"] = {"headline": headline}
    path.write_text(json.dumps(record, indent=1, default=str))


def _read_record(record_path: Path, field: str) -> dict:
    try:
        record = json.loads(record_path.read_text())
        _flat(record["config"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LayerLensError(
            f"{field}: {record_path} is not a run record (JSON with mlflow_run_id and config)"
        ) from None
    return record


def _check_same_config(cfg: DictConfig, record: dict, record_path: Path, field: str, whose: str) -> None:
    before, now = _flat(record["config"]), _comparable(cfg)
    differ = sorted(
        key
        for key in before.keys() | now.keys()
        if key not in before or key not in now or str(before[key]) != str(now[key])
    )
    if differ:
        key = differ[0]
        raise LayerLensError(
            f"{field}: the config differs from the {whose} ({record_path}) at {', '.join(differ[:3])}"
            f"{' ...' if len(differ) > 3 else ''}: {key}={now.get(key)!r} here, {before.get(key)!r} there; "
            f"pass the {whose} overrides"
        )


def sweep_job(cfg: DictConfig, output_dir: Path, sweep: str | None) -> float | bool:
    """For a run of `resume_sweep=<sweep folder>` (-m, the sweep's overrides: the run's folder is its folder in that
    sweep): its headline metric if it finished there (it is not run again); True if it was interrupted in training
    (it resumes from its checkpoint); False if it never started or stopped before training (it runs afresh)."""
    folder = Path(str(cfg.resume_sweep)).expanduser()
    if not sweep:
        raise LayerLensError("resume_sweep: finishes a sweep: run it with -m and that sweep's overrides")
    if not (folder / "multirun.yaml").is_file():
        raise LayerLensError(f"resume_sweep: {folder} is not a sweep's folder (it has no multirun.yaml)")
    record_path = Path(output_dir) / RUN_RECORD
    if not record_path.is_file():
        return False
    record = _read_record(record_path, "resume_sweep")
    _check_same_config(cfg, record, record_path, "resume_sweep", "sweep's")
    finished = record.get("finished")
    if isinstance(finished, dict) and isinstance(finished.get("headline"), (int, float)):
        return float(finished["headline"])
    if interrupt_checkpoint(output_dir).is_file():
        return True
    shutil.rmtree(Path(output_dir) / "checkpoints", ignore_errors=True)  # what an attempt stopped at once left
    return False


def check_resumable(cfg: DictConfig, output_dir: Path) -> str | None:
    """The MLflow run id of the interrupted run in output_dir, after checking that `cfg` can resume it."""
    if not output_dir.is_dir():
        raise LayerLensError(f"resume: no folder {output_dir}")
    record_path = output_dir / RUN_RECORD
    if not record_path.is_file():
        raise LayerLensError(f"resume: {output_dir} has no {RUN_RECORD}: not the output folder of a layerlens.run run")
    record = _read_record(record_path, "resume")
    _check_same_config(cfg, record, record_path, "resume", "interrupted run's")
    checkpoint = interrupt_checkpoint(output_dir)
    if not checkpoint.is_file():
        raise LayerLensError(f"resume: no checkpoint {checkpoint} (only an interrupted run has one)")
    return record.get("mlflow_run_id")
