from dataclasses import dataclass

from layerlens.errors import LayerLensError


@dataclass
class Budget:
    """Limits on what the adaptation may add; a field left null sets no limit."""

    params_pct: float | None = None  # % of the backbone's parameters
    params: int | None = None  # absolute count of trainable parameters
    flops: float | None = None  # added FLOPs per token
    memory_mb: float | None = None  # added training memory
    latency_ms: float | None = None  # added latency per batch

    def __post_init__(self):
        if self.params_pct is not None and not 0 < self.params_pct <= 100:
            raise LayerLensError(f"budget.params_pct must be in (0, 100], got {self.params_pct!r}")
        for name in ("params", "flops", "memory_mb", "latency_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise LayerLensError(f"budget.{name} must be > 0 or null, got {value!r}")

    def params_limit(self, backbone_params: int) -> int | None:
        """The tighter of `params` and `params_pct` as an absolute count of added parameters, or None."""
        limits = [self.params] if self.params is not None else []
        if self.params_pct is not None:
            limits.append(int(self.params_pct / 100 * backbone_params))
        return min(limits) if limits else None

    def limits(self, backbone_params: int) -> dict[str, float]:
        """Every limit that is set, by name: params, flops, memory_mb, latency_ms."""
        limits = {"params": self.params_limit(backbone_params), "flops": self.flops,
                  "memory_mb": self.memory_mb, "latency_ms": self.latency_ms}
        return {name: float(value) for name, value in limits.items() if value is not None}
