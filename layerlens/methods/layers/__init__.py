"""The torch modules that LayerLens's own methods add to a model (LoRA's come from peft)."""
