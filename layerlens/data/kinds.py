"""Task kinds: how a sequence classifier's outputs become predictions, and the metrics that score them."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchmetrics import Metric
from torchmetrics.classification import Accuracy, F1Score, MatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef


@dataclass(frozen=True)
class TaskKind:
    predict: Callable[[torch.Tensor], torch.Tensor]  # logits -> what the metrics compare with the labels
    metrics: dict[str, Callable[[int], Metric]]  # name (logged as val/<name>) -> its metric, given num_labels


def _classes(num_labels: int) -> dict:
    return {"task": "binary"} if num_labels == 2 else {"task": "multiclass", "num_classes": num_labels}


TASK_KINDS = {
    # F1: with two labels that of the positive class (1), as GLUE reports it; with more, the macro average.
    "classification": TaskKind(
        predict=lambda logits: logits.argmax(dim=-1),
        metrics={
            "acc": lambda n: Accuracy(**_classes(n), average="micro"),
            "f1": lambda n: F1Score(**_classes(n), average="macro"),
            "mcc": lambda n: MatthewsCorrCoef(**_classes(n)),
        },
    ),
    # One output, the score itself: transformers' sequence classifiers then train with MSE on float labels.
    "regression": TaskKind(
        predict=lambda logits: logits.squeeze(-1).float(),
        metrics={"pearson": lambda n: PearsonCorrCoef(), "spearman": lambda n: SpearmanCorrCoef()},
    ),
}


def task_kind(num_labels: int) -> str:
    """transformers' reading of num_labels: 1 is a regression, more are classes."""
    return "regression" if num_labels == 1 else "classification"


def metric_names(num_labels: int, stage: str = "val") -> list[str]:
    """The names under which the classifier logs its metrics on the selection split (stage val, e.g. val/acc) or
    on the test split (stage test, e.g. test/acc)."""
    return [f"{stage}/{name}" for name in TASK_KINDS[task_kind(num_labels)].metrics]


def on_test(metric: str) -> str:
    """The test split's counterpart of a selection-split metric: val/acc -> test/acc."""
    return "test/" + metric.removeprefix("val/")
