from dataclasses import dataclass, field
from typing import Literal, cast

from peft import LoraConfig, TaskType, get_peft_model
from torch import nn

from layerlens.adaptation import AdaptContext, Adapted
from layerlens.errors import LayerLensError
from layerlens.lens.sites import layer_targets
from layerlens.models.decoders import peft_task_type
from layerlens.models.families import LINEAR_KINDS, check_kinds
from layerlens.validation import require_choice, require_fraction, require_int, require_positive

BIASES = ("none", "all", "lora_only")  # peft's LoraConfig.bias


@dataclass
class LoraBaseline:
    """Fixed-rank LoRA through peft. `target_kinds` names site kinds, adapted in every layer at the modules the
    model's family keeps them in (layerlens/models/families.py); the other fields after `lr` are peft's
    LoraConfig fields."""

    name: str = "lora"
    lr: float = 2e-3
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_kinds: list[str] = field(default_factory=lambda: ["query", "value"])
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool = True
    layers_to_transform: list[int] | None = None
    modules_to_save: list[str] | None = None

    def __post_init__(self):
        require_positive("baseline.lr", self.lr)
        require_int("baseline.r", self.r, 1)
        require_positive("baseline.lora_alpha", self.lora_alpha)
        require_fraction("baseline.lora_dropout", self.lora_dropout)
        check_kinds("baseline.target_kinds", self.target_kinds, LINEAR_KINDS)
        require_choice("baseline.bias", self.bias, BIASES)
        for layer in self.layers_to_transform or []:
            require_int("baseline.layers_to_transform", layer, 0)

    def lora_config(self, target_modules: list[str], task_type: TaskType = TaskType.SEQ_CLS) -> LoraConfig:
        return LoraConfig(
            task_type=task_type,
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=target_modules,
            bias=cast(Literal["none", "all", "lora_only"], self.bias),  # one of BIASES (__post_init__)
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            init_lora_weights=self.init_lora_weights,
            layers_to_transform=self.layers_to_transform,
            modules_to_save=self.modules_to_save,
        )

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapted:
        targets = layer_targets(model, self.target_kinds, "baseline.target_kinds")
        try:
            return Adapted(get_peft_model(model, self.lora_config(targets, peft_task_type(model))))
        except ValueError as err:  # peft's message for a target module it cannot adapt
            raise LayerLensError(f"baseline.target_kinds: {str(err).splitlines()[0]}") from None
