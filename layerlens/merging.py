"""Folding a trained model's peft adapters (LoRA, DoRA, IA3, LoHa, AdaLoRA) into its base weights: a plain transformers
model that computes what the adapted one does (with model.pooling=mean, LayerLens's head on a plain transformers
encoder)."""

import copy
from typing import cast

from torch import nn

from layerlens.errors import LayerLensError
from layerlens.methods import get_method
from layerlens.planning.choices import Plan


def merged(model: nn.Module, plan: Plan | None = None) -> nn.Module:
    """A copy of `model` with every peft layer merged into the layer it wraps and the task head's trained copy in
    place of the original: a transformers model, or a MeanPoolingClassifier whose encoder is one; refused, in one
    line, where a method of the plan adds modules of its own."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    unmergeable = sorted({c.method for c in plan.adapted() if get_method(c.method).wrap is None}) if plan else []
    if unmergeable:
        raise LayerLensError(
            f"merge: the plan's {', '.join(unmergeable)} sites add modules of their own, which cannot be folded into "
            "the base weights; export without merge=true"
        )
    inner = copy.deepcopy(model.get_base_model() if isinstance(model, PeftModel) else model)
    wrappers = [name for name, m in inner.named_modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
    outermost = [name for name in wrappers if not any(name.startswith(other + ".") for other in wrappers)]
    for name in outermost:
        module = inner.get_submodule(name)
        if isinstance(module, AuxiliaryTrainingWrapper):  # the task head: its trained copy
            plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        else:
            tuner = cast(BaseTunerLayer, module)
            tuner.merge()  # its active adapters
            plain = tuner.get_base_layer()
        inner.set_submodule(name, plain)
    inner.__dict__.pop("peft_config", None)
    return inner
