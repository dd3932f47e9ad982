from dataclasses import dataclass

from torch import nn

from layerlens.adaptation import AdaptContext, Adapted
from layerlens.validation import require_positive


@dataclass
class FullFineTuning:
    """Every weight of the backbone and its head is trained."""

    name: str = "full_ft"
    lr: float = 5e-5

    def __post_init__(self):
        require_positive("baseline.lr", self.lr)

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapted:
        model.requires_grad_(True)
        return Adapted(model)
