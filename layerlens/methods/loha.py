"""LoHa (through peft): a low-rank Hadamard update, (B1 A1) * (B2 A2) elementwise, each factor of rank r, beside
the frozen weight; scaled as LoRA's (alpha = ratio * rank); B2 starts at zero, so the model starts unchanged.
Its update can have rank up to r^2 for the parameters of LoRA of rank 2r.

Injected as peft adapter "loha" (linears.inject), without LoHa's rank and module dropout.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from layerlens.errors import LayerLensError
from layerlens.methods import linears
from layerlens.methods.registry import Build, Method, register
from layerlens.models.families import LINEAR_KINDS

if TYPE_CHECKING:
    from torch import nn

    from layerlens.lens.sites import Site
    from layerlens.planning.costs import Workload

ADAPTER = "loha"


def linear_costs(d_in: int, d_out: int, rank: int, w: Workload) -> tuple[float, float, float]:
    """One linear's: two pairs of rank-r factors; per token, the input through the materialised update (peft's
    F.linear(x, delta)); per batch, the update built from its two rank-r products. Kept for backward: the update."""
    params = 2 * rank * (d_in + d_out)
    per_batch = 2 * 2.0 * rank * d_in * d_out
    return params, 2.0 * d_in * d_out + per_batch / w.tokens_per_batch, float(d_in * d_out)


def wrap(model: nn.Module, chosen: list[tuple[Site, int]], build: Build) -> nn.Module:
    from peft import LoHaConfig
    from torch import nn

    for site, _ in chosen:  # peft's LoHa takes torch's Linear, not GPT-2's Conv1D (its weight transposed)
        other = next(
            (m for m in site.module.modules() if linears.linear_shape(m) and not isinstance(m, nn.Linear)), None
        )
        if other is not None:
            raise LayerLensError(
                f"plan: site {site.name} ({site.kind}) takes no loha: peft's LoHa adapts torch Linear layers, not "
                f"{type(other).__name__} (offer lora, dora or ia3 there)"
            )
    ranks = {target: rank for target, _, rank in linears.targets(model, chosen)}
    ratio = build.lora_alpha_ratio
    config = LoHaConfig(
        target_modules=sorted(ranks),
        r=max(ranks.values()),
        alpha=ratio * max(ranks.values()),  # type: ignore[arg-type]  # peft says int; a float scales alike
        rank_pattern={re.escape(key): r for key, r in ranks.items()},
        alpha_pattern={re.escape(key): ratio * r for key, r in ranks.items()},
    )
    return linears.inject(model, config, ADAPTER, build)


LOHA = register(
    Method(
        name="loha",
        kinds=(*LINEAR_KINDS, *linears.BLOCK_LINEARS),
        default_kinds=(),  # offered where baseline.planner.menu names it
        covers=linears.BLOCK_LINEARS,
        size_name="rank",
        colour="tab:pink",
        dims=linears.dims,
        costs=linears.summed(linear_costs),
        wrap=wrap,
    )
)
