"""The three roles a task's rows play: train (fit), selection (choose the checkpoint), test (read once)."""

import datasets
import numpy as np

from layerlens.data.glue_files import LABEL
from layerlens.data.sft import SftTaskSpec
from layerlens.data.tasks import HOLDOUT, NO_SELECTION, TaskSpec
from layerlens.errors import LayerLensError

TRAIN, SELECTION, TEST = "train", "selection", "test"


def holdout_rows(labels: list, fraction: float, seed: int, stratified: bool) -> np.ndarray:
    """Sorted indices of the held-out rows: `fraction` of each class (rounded, at least one where a class has two
    rows or more), or of all rows when not stratified, drawn with `seed` alone."""
    rng = np.random.default_rng(seed)
    values = np.asarray(labels)
    groups = (
        [np.flatnonzero(values == value) for value in np.unique(values)] if stratified else [np.arange(len(values))]
    )
    held = []
    for rows in groups:
        count = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if len(rows) > 1 else 0
        held.append(rng.permutation(rows)[:count])
    return np.sort(np.concatenate(held)) if held else np.array([], dtype=int)


def protocol_splits(task: TaskSpec | SftTaskSpec, splits: datasets.DatasetDict) -> datasets.DatasetDict:
    """The task's named splits as train, selection (unless task.selection_split is none) and test."""
    train, test = splits[task.train_split], splits[task.test_split]
    if task.selection_split == NO_SELECTION:
        return datasets.DatasetDict({TRAIN: train, TEST: test})
    if task.selection_split != HOLDOUT:
        return datasets.DatasetDict({TRAIN: train, SELECTION: splits[task.selection_split], TEST: test})
    stratified = task.kind == "classification"
    labels = train[LABEL] if stratified else [0] * len(train)  # not stratified: only the row count is read
    held = holdout_rows(labels, task.selection_fraction, task.selection_seed, stratified)
    if len(held) == 0:
        raise LayerLensError(
            f"task.selection_fraction: {task.selection_fraction} of {len(train)} train rows holds "
            "out none: raise it, or set task.selection_split=none"
        )
    kept = np.setdiff1d(np.arange(len(train)), held)
    return datasets.DatasetDict({TRAIN: train.select(kept), SELECTION: train.select(held), TEST: test})
