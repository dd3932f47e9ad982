"""What every task kind's LightningModule shares: the model in training mode, AdamW with linear warmup and decay,
and the selection (val) and test splits each scored by the kind's `_evaluate` per batch and `_log_stage` at the end."""

import lightning as L
import torch
from transformers import get_linear_schedule_with_warmup


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay; biases and LayerNorm weights (1-d tensors) do not."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


class FineTuning(L.LightningModule):
    """Trains `model` on its own loss (the batches hold what it is called with, labels included)."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, warmup_ratio: float):
        super().__init__()
        # from_pretrained returns eval mode, and Lightning keeps each submodule's mode: without this,
        # dropout (LoRA's included) would be off during training.
        self.model = model.train()
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        raise NotImplementedError

    def _log_stage(self, stage: str) -> None:
        raise NotImplementedError

    # val: the selection split, which chooses the checkpoint; test: the test split, read once at the end.
    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self):
        self._log_stage("val")

    def on_test_epoch_end(self):
        self._log_stage("test")

    def configure_optimizers(self):
        """AdamW on the trainable weights (decay_groups), the learning rate warmed up linearly over warmup_ratio of
        the trainer's steps, then decayed linearly to zero."""
        optimizer = torch.optim.AdamW(decay_groups(self.model, self.weight_decay), lr=self.lr)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
