from layerlens.baselines.full_ft import FullFineTuning
from layerlens.baselines.lora import LoraBaseline

__all__ = ["FullFineTuning", "LoraBaseline"]
