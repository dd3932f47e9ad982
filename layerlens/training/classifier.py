from typing import cast

import lightning as L
import torch
from torchmetrics import MetricCollection
from transformers import get_linear_schedule_with_warmup

from layerlens.data.kinds import TASK_KINDS, task_kind


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay; biases and LayerNorm weights (1-d tensors) do not."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


def task_metrics(num_labels: int, prefix: str) -> MetricCollection:
    """The metrics of the task kind that num_labels implies (see layerlens.data.kinds), named prefix + name."""
    metrics = TASK_KINDS[task_kind(num_labels)].metrics
    return MetricCollection({name: make(num_labels) for name, make in metrics.items()}, prefix=prefix)


class SequenceClassifier(L.LightningModule):
    """Trains any transformers sequence classifier (or regressor, with num_labels 1) with AdamW and linear
    warmup/decay."""

    def __init__(self, model: torch.nn.Module, num_labels: int, lr: float, weight_decay: float, warmup_ratio: float):
        super().__init__()
        # from_pretrained returns eval mode, and Lightning keeps each submodule's mode: without this,
        # dropout (LoRA's included) would be off during training.
        self.model = model.train()
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.predictions_of = TASK_KINDS[task_kind(num_labels)].predict
        # val: the selection split, which chooses the checkpoint; test: the test split, read once at the end.
        self.stage_metrics = torch.nn.ModuleDict(
            {stage: task_metrics(num_labels, prefix=f"{stage}/") for stage in ("val", "test")}
        )

    def _metrics(self, stage: str) -> MetricCollection:
        return cast(MetricCollection, self.stage_metrics[stage])

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        out = self.model(**batch)
        self._metrics(stage).update(self.predictions_of(out.logits), batch["labels"])
        self.log(f"{stage}/loss", out.loss, batch_size=batch["labels"].shape[0])

    def _log_stage(self, stage: str) -> None:
        self.log_dict(self._metrics(stage).compute(), prog_bar=True)
        self._metrics(stage).reset()

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self):
        self._log_stage("val")

    def on_test_epoch_end(self):
        self._log_stage("test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(decay_groups(self.model, self.weight_decay), lr=self.lr)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
