"""Stopping a run on SIGINT/SIGTERM with a checkpoint, and resuming it from that checkpoint exactly.

The run stops at a batch boundary (never mid-step or mid-validation) and saves a full Lightning checkpoint
(weights, optimiser, scheduler, loops) plus what Lightning leaves out: the global RNG states (dropout) and
where the epoch's shuffled order had got to. Resuming from it replays the same batches with the same
random numbers, so the run ends as it would have without the interruption. The callback that stops the run and
keeps that state in its checkpoint is Interruption (callbacks.py); what it needs, and the rest of resuming, is here.
"""

import json
import random
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


def _comparable(cfg: DictConfig) -> dict[str, object]:
    resolved = cast(dict, OmegaConf.to_container(cfg, resolve=True))
    resolved.pop("resume", None)
    return _flat(resolved)


def write_run_record(output_dir: Path, run_id: str | None, cfg: DictConfig) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    config = cast(dict, OmegaConf.to_container(cfg, resolve=True))
    config.pop("resume", None)
    record = {"mlflow_run_id": run_id, "config": config}
    (Path(output_dir) / RUN_RECORD).write_text(json.dumps(record, indent=1, default=str))


def check_resumable(cfg: DictConfig, output_dir: Path) -> str | None:
    """The MLflow run id of the interrupted run in output_dir, after checking that `cfg` can resume it."""
    if not output_dir.is_dir():
        raise LayerLensError(f"resume: no folder {output_dir}")
    record_path = output_dir / RUN_RECORD
    if not record_path.is_file():
        raise LayerLensError(f"resume: {output_dir} has no {RUN_RECORD}: not the output folder of a layerlens.run run")
    try:
        record = json.loads(record_path.read_text())
        before = _flat(record["config"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LayerLensError(
            f"resume: {record_path} is not a run record (JSON with mlflow_run_id and config)"
        ) from None
    now = _comparable(cfg)
    differ = sorted(
        key
        for key in before.keys() | now.keys()
        if key not in before or key not in now or str(before[key]) != str(now[key])
    )
    if differ:
        key = differ[0]
        raise LayerLensError(
            f"resume: the config differs from the interrupted run's ({record_path}) at {', '.join(differ[:3])}"
            f"{' ...' if len(differ) > 3 else ''}: {key}={now.get(key)!r} here, {before.get(key)!r} there; "
            "pass the interrupted run's overrides"
        )
    checkpoint = interrupt_checkpoint(output_dir)
    if not checkpoint.is_file():
        raise LayerLensError(f"resume: no checkpoint {checkpoint} (only an interrupted run has one)")
    return record.get("mlflow_run_id")
