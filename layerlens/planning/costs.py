"""What one option (a method of some size at some site) adds: parameters, FLOPs, memory, latency; and what
a plan's depth costs in training time.

Analytic estimates from the site's shape and the training workload: each method gives its parameters, FLOPs
and kept activations (its module in layerlens.methods); memory and latency follow from them alike for every
method, latency as the option's training FLOPs (forward, plus twice that for the backward pass) at a configured
throughput.
"""

from dataclasses import dataclass, replace

from layerlens.methods import NONE, get_method

BYTES_PER_PARAM = 16  # fp32 weight, gradient and AdamW's two moments
BYTES_PER_ACTIVATION = 4
MB = 2**20


@dataclass(frozen=True)
class SiteSpec:
    """A site as the planner sees it: numbers only."""

    name: str
    layer: int
    kind: str
    method: str  # the method it takes first (with one offered, the one it takes)
    d_in: int  # as `method` sees the site
    d_out: int
    utility: float
    # The other methods offered here (baseline.planner.menu), each with the site's (d_in, d_out) as it sees it.
    others: tuple[tuple[str, int, int], ...] = ()

    def methods(self) -> list[str]:
        """Every method offered at the site, its own first."""
        return [self.method, *(name for name, _, _ in self.others)]

    def seen_by(self, method: str) -> "SiteSpec":
        """The site as `method` (one offered here, or none) sees it: its dimensions, `method` first."""
        if method == self.method or method == NONE:
            return self
        d_in, d_out = next((d_in, d_out) for name, d_in, d_out in self.others if name == method)
        return replace(self, method=method, d_in=d_in, d_out=d_out, others=())


@dataclass(frozen=True)
class Workload:
    batch_size: int
    tokens_per_batch: float  # mean non-padding tokens per training batch, measured while profiling
    seq_len: float  # mean padded length of a training batch
    num_heads: int
    flops_per_s: float  # throughput used to turn FLOPs into latency


@dataclass(frozen=True)
class Costs:
    params: float
    flops: float  # added forward FLOPs per token
    memory_mb: float  # parameters with their optimiser state, plus the activations kept for backward
    latency_ms: float  # added training time per batch

    def as_dict(self) -> dict[str, float]:
        return {"params": self.params, "flops": self.flops, "memory_mb": self.memory_mb, "latency_ms": self.latency_ms}


def option_costs(site: SiteSpec, method: str, size: int, w: Workload) -> Costs:
    if method == NONE:
        return Costs(0.0, 0.0, 0.0, 0.0)
    params, flops, activations = get_method(method).costs(site, size, w)
    memory_mb = (params * BYTES_PER_PARAM + activations * BYTES_PER_ACTIVATION) / MB
    latency_ms = 3.0 * flops * w.tokens_per_batch / w.flops_per_s * 1e3
    return Costs(float(params), float(flops), memory_mb, latency_ms)


@dataclass(frozen=True)
class Depth:
    """What prices a plan's depth: backpropagation runs down to the lowest adapted layer, and the frozen
    layers below it run forward once per epoch, or once in all when their output is cached."""

    layers: int  # encoder layers
    layer_flops: float  # forward FLOPs per token of one encoder layer
    epochs: int
    cached: bool  # the frozen bottom stack's output is computed once and reused (FrozenBottomCache)

    def full_ft_step_ms(self, w: Workload) -> float:
        """Full fine-tuning's training step: each layer forward, then backward for its input and its weights."""
        return 3.0 * self.layers * self.layer_flops * w.tokens_per_batch / w.flops_per_s * 1e3

    def fraction(self, lowest: int) -> float:
        """Backbone work per training step, as a share of full fine-tuning's, when no layer below `lowest` is
        adapted: the layers from `lowest` up run forward and backward for their input only (no weight
        gradients); the frozen ones below run forward, and only in the first epoch if cached."""
        below = lowest / self.epochs if self.cached else lowest
        return (2.0 * (self.layers - lowest) + below) / (3.0 * self.layers)
