from layerlens.baselines.adalora import AdaLoraBaseline
from layerlens.baselines.full_ft import FullFineTuning
from layerlens.baselines.lora import LoraBaseline
from layerlens.lens.baseline import LayerLensBaseline

__all__ = ["AdaLoraBaseline", "FullFineTuning", "LayerLensBaseline", "LoraBaseline"]
