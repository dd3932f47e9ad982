"""What one option (a method of some size at some site) adds: parameters, FLOPs, memory, latency.

Analytic estimates from the site's shape and the training workload; latency is the option's training
FLOPs (forward, plus twice that for the backward pass) at a configured throughput.
"""

from dataclasses import dataclass

BYTES_PER_PARAM = 16  # fp32 weight, gradient and AdamW's two moments
BYTES_PER_ACTIVATION = 4
MB = 2**20


@dataclass(frozen=True)
class SiteSpec:
    """A site as the planner sees it: numbers only."""

    name: str
    layer: int
    kind: str
    method: str
    d_in: int
    d_out: int
    utility: float


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


def lora(site: SiteSpec, rank: int, w: Workload) -> tuple[float, float, float]:
    params = rank * (site.d_in + site.d_out)
    return params, 2.0 * params, w.tokens_per_batch * rank


def adapter(site: SiteSpec, width: int, w: Workload) -> tuple[float, float, float]:
    hidden = site.d_out
    return 2 * hidden * width + width + hidden, 4.0 * hidden * width, w.tokens_per_batch * (2 * width + hidden)


def prefix(site: SiteSpec, length: int, w: Workload) -> tuple[float, float, float]:
    hidden = site.d_out
    # Each token's query meets `length` more keys and mixes `length` more values; scores and probabilities stay.
    return 2 * length * hidden, 4.0 * length * hidden, 2.0 * w.batch_size * w.num_heads * w.seq_len * length


METHODS = {"lora": lora, "adapter": adapter, "prefix": prefix}


def option_costs(site: SiteSpec, method: str, size: int, w: Workload) -> Costs:
    if method == "none":
        return Costs(0.0, 0.0, 0.0, 0.0)
    params, flops, activations = METHODS[method](site, size, w)
    memory_mb = (params * BYTES_PER_PARAM + activations * BYTES_PER_ACTIVATION) / MB
    latency_ms = 3.0 * flops * w.tokens_per_batch / w.flops_per_s * 1e3
    return Costs(float(params), float(flops), memory_mb, latency_ms)
