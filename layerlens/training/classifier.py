from typing import cast

import torch
from torchmetrics import MetricCollection

from layerlens.data.kinds import TASK_KINDS, task_kind
from layerlens.training.fine_tuning import FineTuning


def task_metrics(num_labels: int, prefix: str) -> MetricCollection:
    """The metrics of the task kind that num_labels implies (see layerlens.data.kinds), named prefix + name."""
    metrics = TASK_KINDS[task_kind(num_labels)].metrics
    return MetricCollection({name: make(num_labels) for name, make in metrics.items()}, prefix=prefix)


class SequenceClassifier(FineTuning):
    """Trains any transformers sequence classifier (or regressor, with num_labels 1) with AdamW and linear
    warmup/decay."""

    def __init__(self, model: torch.nn.Module, num_labels: int, lr: float, weight_decay: float, warmup_ratio: float):
        super().__init__(model, lr, weight_decay, warmup_ratio)
        self.predictions_of = TASK_KINDS[task_kind(num_labels)].predict
        self.stage_metrics = torch.nn.ModuleDict(
            {stage: task_metrics(num_labels, prefix=f"{stage}/") for stage in ("val", "test")}
        )

    def _metrics(self, stage: str) -> MetricCollection:
        return cast(MetricCollection, self.stage_metrics[stage])

    def _evaluate(self, batch, stage: str) -> None:
        out = self.model(**batch)
        self._metrics(stage).update(self.predictions_of(out.logits), batch["labels"])
        self.log(f"{stage}/loss", out.loss, batch_size=batch["labels"].shape[0])

    def _log_stage(self, stage: str) -> None:
        self.log_dict(self._metrics(stage).compute(), prog_bar=True)
        self._metrics(stage).reset()
