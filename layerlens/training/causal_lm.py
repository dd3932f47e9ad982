"""Instruction tuning's LightningModule: the causal LM loss on completion tokens (the batches' labels), and on the
selection and test splits the token-level loss, its perplexity and exact match of greedy generations."""

import math
from collections.abc import Callable
from typing import cast

import torch
from torchmetrics import SumMetric

from layerlens.data.sft_batches import IGNORED
from layerlens.methods.layers.prefix import prefixed
from layerlens.training.fine_tuning import FineTuning

MODEL_INPUTS = ("input_ids", "attention_mask", "labels")
SUMS = ("loss_sum", "tokens", "matches", "rows")


class CausalLanguageModel(FineTuning):
    """Trains a transformers causal LM with AdamW and linear warmup/decay.

    Generation is greedy, up to `max_new_tokens` or the end token, with a KV cache unless a prefix is attached
    (LayerLens's prefix keeps none: each step then runs the whole sequence); a generation matches when its text,
    stripped, is the reference's.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        decode: Callable[[list[int]], str],
        pad_token_id: int,
        end_token_id: int,
        max_new_tokens: int,
        lr: float,
        weight_decay: float,
        warmup_ratio: float,
    ):
        super().__init__(model, lr, weight_decay, warmup_ratio)
        self.decode = decode
        self.pad_token_id, self.end_token_id, self.max_new_tokens = pad_token_id, end_token_id, max_new_tokens
        self.kv_cache = not prefixed(model)
        # Sums across batches (and DDP ranks): the metrics are their ratios at the end of the split.
        self.sums = torch.nn.ModuleDict(
            {stage: torch.nn.ModuleDict({name: SumMetric() for name in SUMS}) for stage in ("val", "test")}
        )

    def _sum(self, stage: str, name: str) -> SumMetric:
        return cast(SumMetric, cast(torch.nn.ModuleDict, self.sums[stage])[name])

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[str]:
        """Each prompt's greedy completion, as text without special tokens, stripped."""
        out = cast(Callable, self.model.generate)(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            use_cache=self.kv_cache,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.end_token_id,
        )
        return [self.decode(row.tolist()).strip() for row in out[:, prompt_ids.shape[1] :]]

    def _evaluate(self, batch, stage: str) -> None:
        tokens = (batch["labels"][:, 1:] != IGNORED).sum()  # the targets the shifted loss averages over
        loss = self.model(**{k: batch[k] for k in MODEL_INPUTS}).loss
        self._sum(stage, "loss_sum").update(loss.detach() * tokens)
        self._sum(stage, "tokens").update(tokens)
        generated = self.generate(batch["prompt_ids"], batch["prompt_mask"])
        self._sum(stage, "matches").update(sum(g == r for g, r in zip(generated, batch["references"])))
        self._sum(stage, "rows").update(len(generated))

    def _log_stage(self, stage: str) -> None:
        totals = {name: float(self._sum(stage, name).compute()) for name in SUMS}
        loss = totals["loss_sum"] / max(totals["tokens"], 1.0)
        self.log_dict(
            {
                f"{stage}/exact_match": totals["matches"] / max(totals["rows"], 1.0),
                f"{stage}/loss": loss,
                f"{stage}/perplexity": math.exp(min(loss, 700.0)),  # past e^700 a float overflows
            },
            prog_bar=True,
        )
        for name in SUMS:
            self._sum(stage, name).reset()
