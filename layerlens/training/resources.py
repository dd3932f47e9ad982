"""Wall time and peak memory of one run, measured in the process that trains."""

import re
import resource
import time
from pathlib import Path

import lightning as L

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Restart the kernel's high-water mark, so a run in a multirun process measures its own peak."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset (VmHWM), or since process start where /proc lacks it."""
    try:
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", _STATUS.read_text())
    except OSError:
        match = None
    kib = int(match.group(1)) if match else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


class FitTimer(L.Callback):
    """Training time of `Trainer.fit`: its wall time less the validation it runs between epochs."""

    def __init__(self):
        self.train_s = 0.0
        self.train_samples = 0
        self._fit_start = self._val_start = 0.0
        self._val_s = 0.0
        self._before_s = 0.0  # training time of the attempts before a resumed fit

    def _elapsed_s(self) -> float:
        return self._before_s + time.perf_counter() - self._fit_start - self._val_s

    def state_dict(self) -> dict:  # kept in checkpoints, so that a resumed run counts its earlier training too
        return {"train_s": self._elapsed_s(), "train_samples": self.train_samples}

    def load_state_dict(self, state: dict) -> None:
        self._before_s, self.train_samples = state["train_s"], state["train_samples"]

    def on_fit_start(self, trainer, pl_module):
        self._fit_start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self._val_s += time.perf_counter() - self._val_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_samples += int(batch["labels"].shape[0])

    def on_fit_end(self, trainer, pl_module):
        self.train_s = self._elapsed_s()
