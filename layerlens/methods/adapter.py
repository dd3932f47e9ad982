"""A bottleneck adapter (Houlsby-style) on a sub-block's output: x + up(gelu(down(x))), `width` wide."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerlens.methods.linears import block_output
from layerlens.methods.registry import Method, register

if TYPE_CHECKING:
    from torch import nn

    from layerlens.lens.sites import Site
    from layerlens.planning.costs import SiteSpec, Workload


def adapter_params(hidden: int, width: int) -> int:
    return 2 * hidden * width + width + hidden


def dims(module: nn.Module, profiled: tuple[nn.Module, ...]) -> tuple[int, int]:
    width = block_output(module)[1]  # a block's output: as wide as the output of the linear it ends with
    return width, width


def costs(site: SiteSpec, width: int, w: Workload) -> tuple[float, float, float]:
    hidden = site.d_out
    return adapter_params(hidden, width), 4.0 * hidden * width, w.tokens_per_batch * (2 * width + hidden)


def attach(site: Site, width: int) -> nn.Module:
    from layerlens.methods.layers.adapter import attach_adapter

    return attach_adapter(site.module, site.d_out, width)


ADAPTER = register(
    Method(
        name="adapter",
        kinds=("attn_block", "ffn_block"),
        size_name="width",
        colour="tab:orange",
        dims=dims,
        costs=costs,
        attach=attach,
    )
)
