"""(IA)^3 (through peft): a learned vector that scales a linear map's output, one value per output, or on the
feed-forward block's second linear (`ffn_out`) its input, one value per inner unit (the scaled activation of the
IA3 paper; peft's feedforward_modules). The vectors start at one: the model starts unchanged. It has no size but
the one: 1 (a vector).

Injected as peft adapter "ia3" (linears.inject): peft's mixed models (PeftMixedModel) do not take IA3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerlens.methods import linears
from layerlens.methods.registry import Build, Method, register
from layerlens.models.families import LINEAR_KINDS

if TYPE_CHECKING:
    from torch import nn

    from layerlens.lens.sites import Site
    from layerlens.planning.costs import SiteSpec, Workload

ADAPTER = "ia3"
FEEDFORWARD = ("ffn_out",)  # scaled on their input


def costs(site: SiteSpec, size: int, w: Workload) -> tuple[float, float, float]:
    """The vector; one multiply a scaled value a token; kept for backward: the values it scales (its gradient's)."""
    scaled = site.d_in if site.kind in FEEDFORWARD else site.d_out
    return float(scaled), float(scaled), w.tokens_per_batch * scaled


def wrap(model: nn.Module, chosen: list[tuple[Site, int]], build: Build) -> nn.Module:
    from peft import IA3Config

    targets = linears.targets(model, chosen)
    config = IA3Config(
        target_modules=sorted(t for t, _, _ in targets),
        feedforward_modules=sorted(t for t, kind, _ in targets if kind in FEEDFORWARD),
    )
    return linears.inject(model, config, ADAPTER, build)


IA3 = register(
    Method(
        name="ia3",
        kinds=LINEAR_KINDS,
        default_kinds=(),  # offered where baseline.planner.menu names it
        size_name="vector",
        colour="tab:olive",
        dims=linears.dims,
        costs=costs,
        wrap=wrap,
        sizes=(1,),
        max_size=1,
    )
)
