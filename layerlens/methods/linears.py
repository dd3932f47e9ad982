"""What the methods that adapt linear maps through peft share: the linear site kinds, the linears of a block site,
and their shapes for the costs.

A block site (self-attention, the feed-forward block) adapted by a linear method adapts its linear maps, each with
the site's size: self-attention its query, key and value projections; the feed-forward block its two linears
(`ffn_in`, hidden -> inner, and `ffn_out`, inner -> hidden). Such a site's (d_in, d_out) is that of one of them:
self-attention a projection's (hidden, hidden), the feed-forward block `ffn_out`'s (inner, hidden).

Importing it imports no torch; `targets` reads the model's family (layerlens.models) when a plan is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from layerlens.planning.costs import SiteSpec, Workload
    from layerlens.sites import Site

    Costs = tuple[float, float, float]

# As layerlens.models.families.LINEAR_KINDS, which this torch-free registry cannot import (layerlens.models is torch).
LINEAR_KINDS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
BLOCK_LINEARS = {"attention": ("query", "key", "value"), "ffn_block": ("ffn_in", "ffn_out")}


def dims(module: nn.Module, profiled: tuple[nn.Module, ...]) -> tuple[int, int]:
    """A linear site's (in, out); the feed-forward block's `ffn_out` (its `dense`); self-attention's key projection
    (profiled first), as wide as its query and value projections."""
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    linear = module.dense if hasattr(module, "dense") else profiled[0]
    return linear.in_features, linear.out_features


def shapes(site: SiteSpec) -> list[tuple[int, int]]:
    """The (d_in, d_out) of each linear map an option at `site` adapts."""
    if site.kind == "attention":
        return [(site.d_in, site.d_out)] * len(BLOCK_LINEARS["attention"])
    if site.kind == "ffn_block":
        return [(site.d_out, site.d_in), (site.d_in, site.d_out)]  # ffn_in: hidden -> inner; ffn_out: back
    return [(site.d_in, site.d_out)]


def summed(linear_costs: Callable[[int, int, int, Workload], Costs]) -> Callable[[SiteSpec, int, Workload], Costs]:
    """A method's costs (Method.costs) from one linear's, `linear_costs(d_in, d_out, size, workload)`: their sum over
    the linears an option at the site adapts."""

    def costs(site: SiteSpec, size: int, w: Workload) -> Costs:
        parts = [linear_costs(d_in, d_out, size, w) for d_in, d_out in shapes(site)]
        return tuple(sum(values) for values in zip(*parts))  # type: ignore[return-value]

    return costs


def targets(model: nn.Module, chosen: list[tuple[Site, int]]) -> list[tuple[str, str, int]]:
    """(module name as peft matches it, its site kind, size) of every linear map the chosen sites adapt."""
    from layerlens.models.families import model_family

    family = model_family(model)
    out = []
    for site, size in chosen:
        for kind in BLOCK_LINEARS.get(site.kind, ()):
            out.append((family.target(site.layer, kind), kind, size))
        if site.kind not in BLOCK_LINEARS:
            out.append((site.target, site.kind, size))
    return out
