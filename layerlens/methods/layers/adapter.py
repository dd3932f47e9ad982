"""The bottleneck adapter's torch module (Houlsby-style), added to the output of one transformer sub-block."""

import torch
from torch import nn

from layerlens.errors import LayerLensError

ATTR = "layerlens_adapter"


class BottleneckAdapter(nn.Module):
    """x + up(gelu(down(x))); `up` starts at zero so the adapter is the identity at init."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.down = nn.Linear(hidden, width)
        self.act = nn.GELU()
        self.up = nn.Linear(width, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def attach_adapter(block: nn.Module, hidden_size: int, width: int) -> BottleneckAdapter:
    """Add an adapter to `block`'s output (e.g. BertSelfOutput or BertOutput; a decoder's self_attn or mlp).

    A forward hook on the block itself keeps working when peft replaces its `dense` child.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise LayerLensError(f"width must be a positive integer, got {width!r}")
    if hasattr(block, ATTR):
        raise LayerLensError(f"{type(block).__name__} already has an adapter")
    ref = next(block.parameters())
    adapter = BottleneckAdapter(hidden_size, width).to(device=ref.device, dtype=ref.dtype)
    block.add_module(ATTR, adapter)
    block.register_forward_hook(_adapt_output)
    return adapter


def _adapt_output(block: nn.Module, args, output):
    """The block's output through its adapter; of a decoder's attention, which returns (output, attention weights),
    the output."""
    adapter = getattr(block, ATTR)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)
