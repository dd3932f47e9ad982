"""Prefix-tuning on a self-attention layer: `length` learned keys and values prepended to the layer's own."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from layerlens.methods.registry import Method, register

if TYPE_CHECKING:
    from torch import nn

    from layerlens.lens.sites import Site
    from layerlens.planning.costs import SiteSpec, Workload


def prefix_params(hidden: int, length: int) -> int:
    return 2 * length * hidden


def dims(module: nn.Module, profiled: tuple[nn.Module, ...]) -> tuple[int, int]:
    """The key projection's (in, out): the queries as wide as the hidden states, the keys and values as its output
    (narrower under grouped-query attention)."""
    key = cast("nn.Linear", profiled[0])
    return key.in_features, key.out_features


def costs(site: SiteSpec, length: int, w: Workload) -> tuple[float, float, float]:
    # Each token's query (all heads: d_in wide) meets `length` more keys and mixes `length` more values; scores
    # and probabilities stay.
    return (
        prefix_params(site.d_out, length),
        4.0 * length * site.d_in,
        2.0 * w.batch_size * w.num_heads * w.seq_len * length,
    )


def attach(site: Site, length: int) -> nn.Module:
    from layerlens.methods.layers.prefix import attach_prefix

    return attach_prefix(site.module, length)


PREFIX = register(
    Method(
        name="prefix",
        kinds=("attention",),
        size_name="prefix length",
        colour="tab:green",
        dims=dims,
        costs=costs,
        attach=attach,
        bounded_by="max_length",  # no longer than the task's longest sequence
    )
)
