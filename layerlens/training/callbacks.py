"""The Lightning callbacks of a run, together: the training time (FitTimer), a line per epoch where no progress bar is
shown (EpochLog), stopping on a signal with a checkpoint to resume from (Interruption; the rest of resuming is in
resume.py), the checkpoint chosen only from a step on (CheckpointFromStep) and AdaLoRA's rank allocation after each
optimiser step (AdaLoraSchedule)."""

import datetime
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from peft import AdaLoraConfig, AdaLoraModel, PeftModel
from torch.utils.data import DataLoader

from layerlens.training.resume import (
    SIGNALS,
    Interrupted,
    interrupt_checkpoint,
    rng_states,
    set_rng_states,
    sweep_stop_requested,
)

log = logging.getLogger(__name__)

_STATE_KEY = "layerlens_resume"  # Interruption's part of a checkpoint


class FitTimer(L.Callback):
    """Training time of `Trainer.fit`: its wall time less the validation it runs between epochs (`validate_s`).
    `steps_s` is the part spent inside training steps (forward, backward, optimiser step, from batch start to batch
    end): the rest of `train_s` is fetching and collating batches, the loop's own work and saving checkpoints."""

    def __init__(self):
        self.train_s = self.steps_s = self.validate_s = 0.0
        self.train_samples = 0
        self._fit_start = self._val_start = self._batch_start = 0.0
        self._before_s = 0.0  # training time of the attempts before a resumed fit
        self._fitted = False

    def _elapsed_s(self) -> float:
        return self._before_s + time.perf_counter() - self._fit_start - self.validate_s

    def state_dict(self) -> dict:  # kept in checkpoints, so that a resumed run counts its earlier training too
        return {"train_s": self._elapsed_s(), "train_samples": self.train_samples, "steps_s": self.steps_s}

    def load_state_dict(self, state: dict) -> None:
        if self._fitted:  # a checkpoint restored to be scored after the fit: the fit's own record stands
            return
        self._before_s, self.train_samples = state["train_s"], state["train_samples"]
        self.steps_s = state.get("steps_s", 0.0)

    def on_fit_start(self, trainer, pl_module):
        self._fit_start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if not self._fitted:  # not a trainer.validate() after the fit
            self.validate_s += time.perf_counter() - self._val_start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps_s += time.perf_counter() - self._batch_start
        self.train_samples += int(batch["labels"].shape[0])

    def on_fit_end(self, trainer, pl_module):
        self.train_s = self._elapsed_s()
        self._fitted = True


def progress_bar_shown(wanted: bool) -> bool:
    """Lightning's progress bar redraws one line of stdout: a terminal shows it, a log file (a cluster job, a pipe)
    gets carriage returns; it is shown only where it was wanted (trainer.enable_progress_bar) and stdout is a
    terminal."""
    return wanted and sys.stdout.isatty()


class EpochLog(L.Callback):
    """One line per epoch, for a run whose progress bar is not shown: the epoch and its last step, every metric logged
    so far (the epoch's validation; the training loss of its last step) and the wall time since the fit started."""

    def __init__(self):
        self._start = 0.0

    def on_fit_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):  # after the epoch's validation
        if not trainer.is_global_zero:
            return
        metrics = ", ".join(f"{name} {float(value):.4f}" for name, value in sorted(trainer.callback_metrics.items()))
        elapsed = datetime.timedelta(seconds=round(time.perf_counter() - self._start))
        log.info(
            "epoch %d/%d (step %d): %s; %s elapsed",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            trainer.global_step,
            metrics or "no metrics logged",
            elapsed,
        )


class Interruption(L.Callback):
    """SIGINT or SIGTERM: in training, finish the batch at hand (and the epoch's validation, if it is the last
    batch), save `checkpoint` and stop; anywhere else, or on a second signal, stop at once with nothing saved. A run of
    a sweep also stops so, after its batch at hand, once its sweep's `sweep_stop_file` says that the process that
    launched the sweep received the signal."""

    def __init__(self, output_dir: Path, sweep_stop_file: Path | None = None):
        self.output_dir = Path(output_dir)
        self.checkpoint = interrupt_checkpoint(output_dir)
        self.sweep_stop_file = sweep_stop_file
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
            raise Interrupted(
                self.signum, self.output_dir, self.checkpoint if self.checkpoint.is_file() else None
            ) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum, frame) -> None:
        if self._training and self.signum is None:
            self.signum = signum
            log.warning(
                "%s: stopping after this batch, with a checkpoint to resume from (send it again to stop now)",
                signal.Signals(signum).name,
            )
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
        if self.signum is None and (signum := sweep_stop_requested(self.sweep_stop_file)) is not None:
            self.signum = signum
            log.warning(
                "the sweep received %s: stopping after this batch, with a checkpoint to resume from",
                signal.Signals(signum).name,
            )
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


class CheckpointFromStep(ModelCheckpoint):
    """ModelCheckpoint that saves nothing before optimiser step `first_step`."""

    def __init__(self, first_step: int, **kwargs):
        super().__init__(**kwargs)
        self.first_step = first_step
        self.save_s = 0.0  # writing checkpoints: Lightning runs it after FitTimer's on_validation_end, in training time

    def _save_topk_checkpoint(self, trainer, monitor_candidates):
        if trainer.global_step >= self.first_step:
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer, filepath):
        start = time.perf_counter()
        super()._save_checkpoint(trainer, filepath)
        self.save_s += time.perf_counter() - start


class AdaLoraSchedule(L.Callback):
    """Calls peft's `update_and_allocate` after every optimiser step.

    Lightning's automatic optimisation zeroes gradients inside the next step's closure, just before its
    backward, so in `on_train_batch_end` the step's gradients are still there, as AdaLoRA's sensitivities need.
    Steps are counted from 1 (`trainer.global_step` after the step), so the final allocation happens at step
    total_step - tfinal even when tfinal is 0.
    """

    def __init__(self, model: PeftModel, costs: dict[str, int], adapter: str = "default"):
        self.tuner, self.costs, self.adapter = cast(AdaLoraModel, model.base_model), costs, adapter
        self.last_step = 0
        self.final_rank = self.final_params = None

    @property
    def adapter_config(self) -> AdaLoraConfig:
        return cast(AdaLoraConfig, self.tuner.peft_config[self.adapter])

    def kept(self) -> tuple[int, int]:
        """Total rank and adapter parameters the current rank pattern keeps."""
        pattern = self.adapter_config.rank_pattern
        if pattern is None:
            ranks = {name: self.tuner.model.get_parameter(name).shape[0] for name in self.costs}
        else:
            ranks = {name: int(sum(pattern[name])) for name in self.costs}
        return sum(ranks.values()), sum(rank * self.costs[name] for name, rank in ranks.items())

    def state_dict(self) -> dict:
        """What a resumed run needs to allocate as the uninterrupted one would: peft's importance averages and
        the rank pattern (kept in the adapter config, not in the model's weights)."""
        allocator = self.tuner.rankallocator
        return {
            "last_step": self.last_step,
            "final": (self.final_rank, self.final_params),
            "rank_pattern": self.adapter_config.rank_pattern,
            "ipt": allocator.ipt,
            "exp_avg_ipt": allocator.exp_avg_ipt,
            "exp_avg_unc": allocator.exp_avg_unc,
        }

    def load_state_dict(self, state: dict) -> None:
        allocator = self.tuner.rankallocator
        self.last_step = state["last_step"]
        self.final_rank, self.final_params = state["final"]
        self.adapter_config.rank_pattern = state["rank_pattern"]
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (
            state["ipt"],
            state["exp_avg_ipt"],
            state["exp_avg_unc"],
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.last_step:  # accumulating gradients: no optimiser step on this batch
            return
        self.last_step = step
        self.tuner.update_and_allocate(step)
        config = self.tuner.peft_config[self.adapter]
        rank, params = self.kept()
        if step == config.total_step - config.tfinal:
            self.final_rank, self.final_params = rank, params
        pl_module.log_dict({"adalora/rank": float(rank), "adalora/params": float(params)}, batch_size=1)

    def on_train_end(self, trainer, pl_module):
        if self.final_rank is None:
            config = self.tuner.peft_config[self.adapter]
            log.warning(
                "AdaLoRA stopped at step %d before its final allocation at step %d: ranks are not at the final budget",
                self.last_step,
                config.total_step - config.tfinal,
            )
            return
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"adalora/final_rank": float(self.final_rank), "adalora/final_params": float(self.final_params)},
                step=trainer.global_step,
            )
