"""SIGINT/SIGTERM during training: a checkpoint and a KILLED MLflow run; resuming ends as an uninterrupted run."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from layerlens.data.selection import TRAIN
from layerlens.errors import LayerLensError
from layerlens.pipeline import run_experiment
from layerlens.training.callbacks import Interruption
from layerlens.training.resume import EpochShuffle, Interrupted, rng_states, set_rng_states, shuffled_train_loader
from tests.conftest import REPO, TINY, run_module

# Three epochs of 8 steps; the signal lands mid-epoch 0.
ARGS = [*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=8"]


def start(out: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "layerlens.run", *args, f"hydra.run.dir={out}"],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt(out: Path, signum: int, args: list[str], after_steps: int = 5) -> tuple[subprocess.Popen, str]:
    """Run `args` in `out` and send `signum` once `after_steps` training steps are logged: within epoch 0, and
    for adalora within its rank-budgeting phase (steps 2 to 12 of 24 here)."""
    proc = start(out, args)
    deadline = time.monotonic() + 600
    while logged_steps(out) < after_steps:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=600)
    return proc, err


def logged_steps(out: Path) -> int:
    try:
        return len(history(os.environ["MLFLOW_TRACKING_URI"], run_id(out), "train/loss"))
    except (FileNotFoundError, ValueError):  # run.json not (fully) written yet
        return 0


def run_id(out: Path) -> str:
    return json.loads((out / "run.json").read_text())["mlflow_run_id"]


def mlflow_run(tracking_uri: str, out: Path):
    return MlflowClient(tracking_uri).get_run(run_id(out))


def history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))


# lora: the plain case; layerlens: the resumed run rebuilds the saved plan; adalora: the rank allocator's
# importance averages and rank pattern live outside the model's weights. The handler treats SIGINT and SIGTERM
# alike (the signal's name and number aside), so each baseline takes one of them and both are sent.
# The run to be cut is a subprocess (it takes the signal); the uninterrupted run, and the resumed one but for lora's
# (a new process, as a user resumes), run in this process.
@pytest.mark.parametrize(
    "baseline,signum",
    [("lora", signal.SIGTERM), ("layerlens", signal.SIGINT), ("adalora", signal.SIGTERM)],
    ids=["lora-SIGTERM", "layerlens-SIGINT", "adalora-SIGTERM"],
)
def test_a_signal_saves_kills_and_resumes_to_the_uninterrupted_result(
    tracking_uri, compose_run, tmp_path, baseline, signum, call_module
):
    args = [*ARGS, f"baseline={baseline}"]
    full = call_module("run", *args, f"hydra.run.dir={tmp_path / 'full'}", cwd=REPO)
    assert full.returncode == 0, full.stderr[-3000:]
    out = tmp_path / "cut"
    proc, err = interrupt(out, signum, args)

    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    checkpoint = out / "checkpoints" / "last.ckpt"
    assert last.startswith(f"interrupted: {signum.name} received; training state saved to {checkpoint}"), last
    assert f"resume={out}" in last, last
    cut = mlflow_run(tracking_uri, out)
    assert cut.info.status == "KILLED"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert 0 < len(history(tracking_uri, cut.info.run_id, "train/loss")) < 3 * 8  # stopped mid-training
    # ... and mid-epoch: the checkpoint holds epoch 0 with some, not all, of its 8 batches done
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["layerlens_resume"]
    batch_size = compose_run().data.batch_size
    done = (state["epoch"], *divmod(state["samples_done"], batch_size))  # (epoch, batches, samples left over)
    assert done[0] == 0 and 0 < done[1] < 8 and done[2] == 0, done

    # A resume with another config is refused, naming the field, before anything runs.
    with pytest.raises(LayerLensError, match=r"resume: the config differs .* at .*baseline"):
        run_experiment(
            compose_run("trainer.max_epochs=3", "trainer.limit_train_batches=8", "baseline=full_ft", f"resume={out}"),
            tmp_path / "unused",
        )

    resumed = (run_module if baseline == "lora" else call_module)("run", *args, f"resume={out}", cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done, reference = mlflow_run(tracking_uri, out), mlflow_run(tracking_uri, tmp_path / "full")
    assert done.info.run_id == cut.info.run_id and done.info.status == "FINISHED"
    for key in ("val/acc", "val/f1", "val/loss"):
        assert done.data.metrics[key] == pytest.approx(reference.data.metrics[key], abs=1e-6), key
    for key in ("train/loss", "val/loss"):  # every step and epoch, not only the best checkpoint's
        steps, expected = zip(*history(tracking_uri, reference.info.run_id, key))
        got = dict(history(tracking_uri, done.info.run_id, key))
        assert sorted(got) == list(steps), key
        assert [got[step] for step in steps] == pytest.approx(expected, abs=1e-6), key
    assert not (out / "checkpoints" / "last.ckpt").exists()

    # Finished: nothing left to resume.
    with pytest.raises(LayerLensError, match="resume: no checkpoint .*last.ckpt"):
        run_experiment(
            compose_run(
                "trainer.max_epochs=3", "trainer.limit_train_batches=8", f"baseline={baseline}", f"resume={out}"
            ),
            tmp_path / "unused",
        )


def test_resume_of_a_missing_folder_fails_in_one_line(compose_run, tmp_path):
    with pytest.raises(LayerLensError, match=f"resume: no folder {tmp_path / 'nope'}"):
        run_experiment(compose_run(f"resume={tmp_path / 'nope'}"), tmp_path)
    with pytest.raises(LayerLensError, match=f"resume: {tmp_path} has no run.json"):
        run_experiment(compose_run(f"resume={tmp_path}"), tmp_path)


# EpochShuffle and the RNG states: what a resume relies on to replay the batches and random numbers it missed.


def test_an_epochs_order_is_a_permutation_drawn_from_seed_and_epoch_alone():
    orders = []
    for epoch in range(3):
        sampler = EpochShuffle(20, seed=3)
        sampler.set_epoch(epoch)
        torch.manual_seed(100 + epoch)  # the global RNG plays no part
        order = list(sampler)
        assert sorted(order) == list(range(20)) and len(sampler) == 20
        torch.manual_seed(7)
        assert list(sampler) == order  # the same epoch again: the same order
        orders.append(order)
    assert len({tuple(order) for order in orders}) == 3  # each epoch its own order
    assert list(EpochShuffle(20, seed=4)) != orders[0]  # and each seed


@pytest.mark.parametrize("done", [0, 1, 8, 19, 20])
def test_a_skip_continues_the_epochs_order_exactly_where_it_stopped(done):
    before = EpochShuffle(20, seed=3)
    before.set_epoch(2)
    order = list(before)
    before.set_epoch(3)
    next_epoch = list(before)
    resumed = EpochShuffle(20, seed=3)  # a new process: restored as Interruption.on_load_checkpoint does it
    resumed.epoch, resumed.skip = 2, done
    resumed.set_epoch(2)  # Lightning sets the epoch as it starts it again
    assert list(resumed) == order[done:]
    assert list(resumed) == order  # the skip is for that one pass
    resumed.set_epoch(3)
    assert list(resumed) == next_epoch


def rows_loader(count: int, batch_size: int, seed: int):
    rows = [
        torch.tensor([float(i), *torch.randn(3, generator=torch.Generator().manual_seed(i)).tolist()])
        for i in range(count)
    ]  # column 0: the row's index
    data = SimpleNamespace(tokenised={TRAIN: rows}, batch_size=batch_size, collate=torch.stack, num_workers=0)
    return shuffled_train_loader(data, seed)


def test_the_training_loader_resumes_at_the_first_batch_not_yet_trained():
    loader = rows_loader(24, 4, seed=5)
    loader.sampler.set_epoch(1)
    batches = [b[:, 0].tolist() for b in loader]
    assert len(batches) == 6 and sorted(row for b in batches for row in b) == list(range(24))
    resumed = rows_loader(24, 4, seed=5)
    resumed.sampler.epoch, resumed.sampler.skip = 1, 2 * 4  # two batches of 4 done
    assert [b[:, 0].tolist() for b in resumed] == batches[2:]


def draws():
    return torch.rand(3).tolist(), np.random.standard_normal(3).tolist(), np.random.rand(2).tolist(), random.random()


def test_rng_states_round_trip_through_a_weights_only_checkpoint():
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    np.random.standard_normal()  # leaves numpy's legacy generator holding a cached Gaussian: part of its state
    buffer = io.BytesIO()
    torch.save({"rng": rng_states()}, buffer)
    expected = draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    assert draws() != expected
    buffer.seek(0)
    set_rng_states(torch.load(buffer, weights_only=True)["rng"])
    assert draws() == expected


class Recorder(L.LightningModule):
    """A linear model behind dropout (global RNG) that records the rows of every batch it trains on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.dropout = nn.Linear(3, 1), nn.Dropout(0.5)
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch[:, 0].int().tolist()))
        return self.linear(self.dropout(batch[:, 1:])).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SignalAt(L.Callback):
    """Delivers `signum` to the Interruption handler, as the OS would, as batch `index` of epoch 0 ends."""

    def __init__(self, interruption: Interruption, index: int):
        self.interruption, self.index = interruption, index

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.index:
            self.interruption._on_signal(signal.SIGTERM, None)


def fit(folder: Path, signal_at: int | None = None, resume: bool = False) -> tuple[Recorder, Interruption]:
    module, interruption = Recorder(), Interruption(folder)
    interruption.loader = rows_loader(24, 4, seed=5)
    callbacks = [] if signal_at is None else [SignalAt(interruption, signal_at)]
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, interruption],
    )
    L.seed_everything(1)
    with interruption.handling_signals():
        trainer.fit(
            module, train_dataloaders=interruption.loader, ckpt_path=interruption.checkpoint if resume else None
        )
    return module, interruption


def test_a_cut_mid_epoch_resumes_to_the_uninterrupted_batches_and_weights(tmp_path):
    full, _ = fit(tmp_path / "full")
    assert len(full.seen) == 2 * 6
    with pytest.raises(Interrupted) as cut:
        fit(tmp_path / "cut", signal_at=2)  # as the third of epoch 0's 6 batches ends
    checkpoint = cut.value.checkpoint
    assert checkpoint == tmp_path / "cut" / "checkpoints" / "last.ckpt" and checkpoint.is_file()
    state = torch.load(checkpoint, weights_only=False)["layerlens_resume"]
    assert (state["epoch"], state["samples_done"]) == (0, 3 * 4)  # mid-epoch: 3 of its 6 batches of 4 done
    resumed, _ = fit(tmp_path / "cut", resume=True)
    assert resumed.seen == full.seen[3:]  # the rest of epoch 0 (not its start again), then epoch 1
    # the same batches with the same dropout masks: the same weights
    for got, expected in zip(resumed.parameters(), full.parameters()):
        assert torch.equal(got, expected)
