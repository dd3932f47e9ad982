"""Training time measured on the machine at hand (baseline.planner.time_model=measured): pure numbers.

layerlens/lens/calibration.py times a few training steps of the model at the profile's batch shape: full fine-tuning;
the frozen backbone with backpropagation stopping at a few depths, with and without the frozen-layer cache; and the
time one option (a method at a size, at one site of each kind) adds to a step. `StepTimes` holds those figures and
prices a plan as `Depth` and the options' FLOPs do under the analytic model: the share of full fine-tuning's step
time that a plan's depth costs, and each option's added milliseconds per step.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from layerlens.errors import LayerLensError


def fit_line(sizes: Sequence[float], added_ms: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of the added time over the sizes, neither below zero (an option never
    makes a step faster: a negative figure is the machine's noise)."""
    if len(sizes) != len(added_ms) or not sizes:
        raise ValueError(f"fit_line needs as many times as sizes, at least one, got {len(sizes)} and {len(added_ms)}")
    x, y = np.asarray(sizes, dtype=float), np.asarray(added_ms, dtype=float)
    if np.ptp(x) == 0:
        return max(float(y.mean()), 0.0), 0.0
    slope, intercept = np.polyfit(x, y, 1)
    if slope < 0:
        return max(float(y.mean()), 0.0), 0.0
    if intercept < 0:  # through the origin, the least-squares slope
        return 0.0, max(float((x * y).sum() / (x * x).sum()), 0.0)
    return float(intercept), float(slope)


def interpolate(points: dict[int, float], at: int) -> float:
    """The piecewise-linear curve through `points` (depth -> ms) at `at`, held flat past its ends."""
    depths = sorted(points)
    return float(np.interp(at, depths, [points[d] for d in depths]))


@dataclass(frozen=True)
class StepTimes:
    """Measured step times (milliseconds) of one model, batch shape and machine.

    `depth_ms[d]`: a step of the frozen backbone with backpropagation down to layer d (d = layers: to the task head
    alone), at a few depths (linear in between). `cached_depth_ms`, where the frozen-layer cache serves the layers
    below d: the same steps once the cache holds every example (empty where the model does not cache). `option_ms`:
    "method/kind" -> (intercept, slope) of the time one option of that method at a site of that kind adds to a step,
    per unit of size.
    """

    layers: int
    epochs: int
    full_ms: float
    depth_ms: dict[int, float]
    option_ms: dict[str, tuple[float, float]]
    cached_depth_ms: dict[int, float] | None = None

    def __post_init__(self):
        if self.full_ms <= 0:
            raise LayerLensError(f"calibration: full fine-tuning's step must take some time, got {self.full_ms} ms")
        for name, points in (("depth_ms", self.depth_ms), ("cached_depth_ms", self.cached_depth_ms or {})):
            outside = [d for d in points if not 0 <= d <= self.layers]
            if outside:
                raise LayerLensError(f"calibration: {name} has depth {outside[0]} outside 0..{self.layers}")
        if not self.depth_ms:
            raise LayerLensError("calibration: depth_ms must time at least one depth")

    def step_ms(self, lowest: int) -> float:
        """The backbone's mean step time over the epochs with no layer below `lowest` adapted: with the cache, the
        first epoch fills it (uncached steps) and the others read it."""
        uncached = interpolate(self.depth_ms, lowest)
        if not self.cached_depth_ms or lowest == 0:
            return uncached
        cached = interpolate(self.cached_depth_ms, lowest)
        return (uncached + (self.epochs - 1) * cached) / self.epochs

    def fraction(self, lowest: int) -> float:
        """The backbone's step time with no layer below `lowest` adapted, as a share of full fine-tuning's."""
        return self.step_ms(lowest) / self.full_ms

    def full_ft_step_ms(self, workload=None) -> float:
        return self.full_ms

    def latency_ms(self, method: str, kind: str, size: int) -> float:
        """What one option adds to a step: measured at a site of its kind (see the class docstring)."""
        key = f"{method}/{kind}"
        if key not in self.option_ms:
            raise LayerLensError(
                f"calibration: {method} at {kind} sites was not timed (timed: {sorted(self.option_ms)})"
            )
        intercept, slope = self.option_ms[key]
        return intercept + slope * size
