"""Per-site utility for fine-tuning, measured from the gradients of a few training batches."""

import time
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from scipy.stats import spearmanr
from torch import nn

from layerlens.errors import LayerLensError
from layerlens.lens.sites import Site
from layerlens.validation import require_int, require_nonnegative

STATISTICS = ("grad_norm", "fisher", "sensitivity")


@dataclass
class ProfileSettings:
    num_batches: int = 16  # conf/baseline/layerlens.yaml says why
    # Weights of the statistics in the utility; each statistic is first divided by its mean over sites.
    weights: dict[str, float] = field(default_factory=lambda: {"grad_norm": 1.0, "fisher": 1.0, "sensitivity": 1.0})

    def __post_init__(self):
        require_int("baseline.profile.num_batches", self.num_batches, 2)  # two halves for the validation
        if not isinstance(self.weights, dict):
            raise LayerLensError(
                f"baseline.profile.weights must map statistics ({', '.join(STATISTICS)}) to weights, "
                f"got {self.weights!r}"
            )
        unknown = set(self.weights) - set(STATISTICS)
        if unknown:
            raise LayerLensError(
                f"baseline.profile.weights: unknown statistic {sorted(unknown)[0]!r} "
                f"(choose from: {', '.join(STATISTICS)})"
            )
        for name, weight in self.weights.items():
            require_nonnegative(f"baseline.profile.weights.{name}", weight)
        if not any(w > 0 for w in self.weights.values()):
            raise LayerLensError(f"baseline.profile.weights must have one weight > 0, got {self.weights}")


def too_many_batches(num_batches: int, available: int) -> str:
    return f"baseline.profile.num_batches must be <= {available} (the training batches available), got {num_batches}"


@dataclass
class Profile:
    """Per batch and site: gradient norm, Fisher trace (sum of squared gradients), sensitivity sum |w * g|."""

    sites: list[str]
    per_batch: dict[str, np.ndarray]  # statistic -> (batches, sites)
    weights: dict[str, float]
    batch_size: int
    tokens_per_batch: float  # mean non-padding tokens
    seq_len: float  # mean padded length
    seconds: float

    def statistic(self, name: str, batches: slice = slice(None)) -> np.ndarray:
        return self.per_batch[name][batches].mean(axis=0)

    def utility(self, batches: slice = slice(None)) -> np.ndarray:
        total = np.zeros(len(self.sites))
        for name, weight in self.weights.items():
            values = self.statistic(name, batches)
            total += weight * values / max(values.mean(), np.finfo(float).tiny)
        return total

    def validation(self) -> dict[str, float]:
        """Spread of the utilities, and how well the utility from one half of the batches predicts the
        gradient norm and Fisher trace measured on the other, independent half (Spearman, with p-values)."""
        utility = self.utility()
        first, second = slice(0, None, 2), slice(1, None, 2)
        held_out_utility = self.utility(first)
        grad = spearmanr(held_out_utility, self.statistic("grad_norm", second))
        fisher = spearmanr(held_out_utility, self.statistic("fisher", second))
        return {
            "profile/utility_cv": float(utility.std() / utility.mean()),
            "profile/grad_corr": float(grad.statistic),
            "profile/grad_corr_p": float(grad.pvalue),
            "profile/fisher_corr": float(fisher.statistic),
            "profile/fisher_corr_p": float(fisher.pvalue),
            "profile/batches": float(self.per_batch["fisher"].shape[0]),
            "time/profile_s": self.seconds,
        }


def profile_sites(model: nn.Module, sites: list[Site], batches, settings: ProfileSettings) -> Profile:
    """One forward and backward pass per batch, every weight requiring gradients; hooks reduce each
    parameter's gradient to its statistics as soon as it is accumulated and free it."""
    start = time.perf_counter()
    site_params = [[id(p) for m in site.profiled for p in m.parameters()] for site in sites]
    sums = {key: torch.zeros(2, dtype=torch.float64) for keys in site_params for key in keys}  # (sum g^2, sum |w g|)

    def reduce(p):
        g = p.grad.detach()
        if id(p) in sums:
            sums[id(p)] += torch.stack([(g * g).sum(), (p.detach() * g).abs().sum()]).double()
        p.grad = None

    was_training = model.training
    model.eval()  # no dropout: the statistics measure the weights, not a random mask
    model.requires_grad_(True)
    handles = [p.register_post_accumulate_grad_hook(reduce) for p in model.parameters()]
    rows, tokens, lengths = [], [], []
    try:
        taken = list(islice(batches, settings.num_batches))
        if len(taken) < settings.num_batches:
            raise LayerLensError(too_many_batches(settings.num_batches, len(taken)))
        for batch in track(taken, description="profiling", console=Console(stderr=True), transient=True):
            for s in sums.values():
                s.zero_()
            model(**batch).loss.backward()
            per_site = np.array([sum(sums[k].numpy() for k in keys) for keys in site_params])
            rows.append(np.stack([np.sqrt(per_site[:, 0]), per_site[:, 0], per_site[:, 1]]))
            tokens.append(float(batch["attention_mask"].sum()))
            lengths.append(batch["attention_mask"].shape[1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    stacked = np.stack(rows)  # (batches, statistics, sites)
    return Profile(
        sites=[site.name for site in sites],
        per_batch={name: stacked[:, i, :] for i, name in enumerate(STATISTICS)},
        weights={k: float(v) for k, v in settings.weights.items() if v > 0},
        batch_size=int(taken[0]["attention_mask"].shape[0]),
        tokens_per_batch=float(np.mean(tokens)),
        seq_len=float(np.mean(lengths)),
        seconds=time.perf_counter() - start,
    )
