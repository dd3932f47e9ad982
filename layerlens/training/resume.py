"""Stopping a run on SIGINT/SIGTERM with a checkpoint, and resuming it from that checkpoint exactly.

The run stops at a batch boundary (never mid-step or mid-validation) and saves a full Lightning checkpoint
(weights, optimiser, scheduler, loops) plus what Lightning leaves out: the global RNG states (dropout) and
where the epoch's shuffled order had got to. Resuming from it replays the same batches with the same
random numbers, so the run ends as it would have without the interruption.
"""

import json
import logging
import random
import signal
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from layerlens.errors import LayerLensError
from layerlens.data.selection import TRAIN

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RUN_RECORD = "run.json"  # in the output folder: the MLflow run id and the config, for resuming
_STATE_KEY = "layerlens_resume"



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
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
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
    return DataLoader(rows, batch_size=data.batch_size, sampler=EpochShuffle(len(rows), seed), collate_fn=data.collate,
                      num_workers=data.num_workers, generator=torch.Generator().manual_seed(seed))


class Interruption(L.Callback):
    """SIGINT or SIGTERM: in training, finish the batch at hand (and the epoch's validation, if it is the last
    batch), save `checkpoint` and stop; anywhere else, or on a second signal, stop at once with nothing saved."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.checkpoint = interrupt_checkpoint(output_dir)
        self.loader: DataLoader | None = None  # the EpochShuffle training loader whose position checkpoints keep
        self.signum: int | None = None
        self._training = False
        self._rng = None

    @contextmanager
    def handling_signals(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield self
            return
        previous = {signum: signal.signal(signum, self._on_signal) for signum in SIGNALS}
        try:
            yield self
        except (KeyboardInterrupt, SystemExit):  # Lightning turns both into SystemExit (sys.exit(1), SIGTERMException)
            if self.signum is None:
                raise
            raise Interrupted(self.signum, self.output_dir, self.checkpoint if self.checkpoint.is_file() else None) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum, frame) -> None:
        if self._training and self.signum is None:
            self.signum = signum
            log.warning("%s: stopping after this batch, with a checkpoint to resume from (send it again to stop now)",
                        signal.Signals(signum).name)
            return
        self.signum = self.signum or signum
        raise KeyboardInterrupt

    def _stop_at_boundary(self, trainer) -> None:
        # Lightning's own SIGTERM flag: its loops stop at the end of this batch (after the scheduler step and
        # the loss logging), or after this epoch's end, and raise SIGTERMException.
        trainer._signal_connector.received_sigterm = True

    def on_train_start(self, trainer, pl_module):
        # Replace the SIGTERM handler that Lightning installs for fit, which could stop mid-validation.
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                signal.signal(signum, self._on_signal)
        self._training = True
        if self._rng is not None:  # after the loaders are set up, just before the first resumed batch
            set_rng_states(self._rng)
            self._rng = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.signum is not None and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._stop_at_boundary(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.signum is not None:
            self._stop_at_boundary(trainer)

    def on_train_end(self, trainer, pl_module):
        self._training = False
        if self.signum is not None:  # after the last epoch's end: the checkpoint holds a finished training
            raise SIGTERMException

    def on_exception(self, trainer, pl_module, exception):
        self._training = False
        if isinstance(exception, SIGTERMException) and self.signum is not None:
            trainer.save_checkpoint(self.checkpoint)
            log.info("saved %s", self.checkpoint)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        epochs = trainer.fit_loop.epoch_progress.current
        mid_epoch = epochs.started > epochs.completed
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed if mid_epoch else 0
        checkpoint[_STATE_KEY] = {
            "rng": rng_states(),
            "epoch": trainer.current_epoch,
            "samples_done": batches * self.loader.batch_size if self.loader is not None else 0,
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        state = checkpoint.get(_STATE_KEY)
        if state is None or self.loader is None:
            return
        self.loader.sampler.epoch, self.loader.sampler.skip = state["epoch"], state["samples_done"]
        self._rng = state["rng"]


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _comparable(cfg: DictConfig) -> dict[str, object]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("resume", None)
    return _flat(resolved)


def write_run_record(output_dir: Path, run_id: str | None, cfg: DictConfig) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    record = {"mlflow_run_id": run_id, "config": OmegaConf.to_container(cfg, resolve=True)}
    record["config"].pop("resume", None)
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
        raise LayerLensError(f"resume: {record_path} is not a run record (JSON with mlflow_run_id and config)") from None
    now = _comparable(cfg)
    differ = sorted(key for key in before.keys() | now.keys() if key not in before or key not in now
                    or str(before[key]) != str(now[key]))
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
