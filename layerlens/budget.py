import math
from dataclasses import dataclass
from typing import cast

from layerlens.errors import LayerLensError
from layerlens.validation import at_least, is_number, shown


@dataclass
class Budget:
    """Limits on what the adaptation may add; a field left null sets no limit."""

    params_pct: float | None = None  # % of the backbone's parameters
    params: int | None = None  # absolute count of trainable parameters
    flops: float | None = None  # added FLOPs per token
    memory_mb: float | None = None  # added training memory
    latency_ms: float | None = None  # added latency per batch
    # Estimated training time, % of full fine-tuning's: how deep backpropagation runs, plus the sites' latency.
    train_time_pct: float | None = None

    def __post_init__(self):
        if self.params_pct is not None and not (is_number(self.params_pct) and 0 < self.params_pct <= 100):
            raise LayerLensError(f"budget.params_pct must be in (0, 100] or null, got {self.params_pct!r}")
        if self.train_time_pct is not None and not (is_number(self.train_time_pct) and self.train_time_pct > 0):
            raise LayerLensError(
                f"budget.train_time_pct must be a positive number or null, got {self.train_time_pct!r}"
            )
        for name in ("params", "flops", "memory_mb", "latency_ms"):
            value = getattr(self, name)
            if value is not None and not (is_number(value) and math.isfinite(value) and value > 0):
                raise LayerLensError(f"budget.{name} must be a positive number or null, got {value!r}")

    def params_limit(self, backbone_params: int) -> int | None:
        """The tighter of `params` and `params_pct` as an absolute count of added parameters, or None."""
        limits = [self.params] if self.params is not None else []
        if self.params_pct is not None:
            limits.append(int(self.params_pct / 100 * backbone_params))
        return min(limits) if limits else None

    def params_field(self, backbone_params: int) -> str | None:
        """The field that sets `params_limit`: budget.params or budget.params_pct (the tighter), or None."""
        if self.params_pct is None:
            return None if self.params is None else "budget.params"
        if self.params is not None and self.params <= int(self.params_pct / 100 * backbone_params):
            return "budget.params"
        return "budget.params_pct"

    def limits(self, backbone_params: int) -> dict[str, float]:
        """Every limit that is set, by name: params, flops, memory_mb, latency_ms, train_time_pct."""
        limits = {
            "params": self.params_limit(backbone_params),
            "flops": self.flops,
            "memory_mb": self.memory_mb,
            "latency_ms": self.latency_ms,
            "train_time_pct": self.train_time_pct,
        }
        return {name: float(value) for name, value in limits.items() if value is not None}


def params_pct_too_small(budget: Budget, needed: float, backbone_params: int, purpose: str, cheapest: str) -> str:
    """The error for a budget.params_pct whose limit is under `needed` added parameters: the smallest share that
    holds them, what they are for (`purpose`) and what `cheapest` thing costs that many."""
    return (
        f"budget.params_pct must be >= {params_pct_for(needed, backbone_params)} {purpose} "
        f"(the cheapest {cheapest} adds {shown(needed)} parameters; the backbone has {backbone_params}), "
        f"got {shown(cast(float, budget.params_pct))}"
    )


def params_pct_for(count: float, backbone_params: int) -> str:
    """The smallest budget.params_pct, as printed (rounded up), whose limit holds `count` added parameters."""
    share = 100 * math.ceil(count) / backbone_params
    while int(float(at_least(share)) / 100 * backbone_params) < count:  # int() in params_limit rounds down
        share *= 1.0001
    return at_least(share)
