"""The utilities a plan is made from: the profiled ones, or a control that spends the same budget without them.

Controls go through the same profiling, planner, allocator and build as LayerLens; only the numbers the planner
values sites by differ, so a control that plans as well as the profile shows what the profile adds.
"""

import numpy as np

from layerlens.errors import LayerLensError

PROFILED = "profiled"
UTILITIES = {
    PROFILED: "each site's profiled utility",
    "uniform": "every site equal",
    "depth": "the layer index plus one: higher layers first, no profiling",
    "random": "the profiled utilities permuted with baseline.planner.utility_seed",
    "kind_depth": "one constant per site kind (baseline.planner.kind_prior) times the layer index plus one",
}


def planning_utilities(
    name: str, profiled: np.ndarray, layers: list[int], kinds: list[str], seed: int, kind_prior: dict[str, float]
) -> np.ndarray:
    """The utility of every site under the choice `name` (see UTILITIES), from the profiled ones and the sites'
    layers and kinds."""
    profiled = np.asarray(profiled, dtype=float)
    depth = np.asarray(layers, dtype=float) + 1.0
    if name == PROFILED:
        return profiled
    if name == "uniform":
        return np.ones_like(profiled)
    if name == "depth":
        return depth
    if name == "random":
        return np.random.default_rng(seed).permutation(profiled)
    if name == "kind_depth":
        missing = sorted(set(kinds) - set(kind_prior))
        if missing:
            raise LayerLensError(
                f"baseline.planner.kind_prior has no constant for site kind {missing[0]!r} "
                f"(it has: {', '.join(kind_prior) or 'none'})"
            )
        return np.array([kind_prior[kind] for kind in kinds], dtype=float) * depth
    raise LayerLensError(f"baseline.planner.utility must be one of {', '.join(UTILITIES)}, got {name!r}")
