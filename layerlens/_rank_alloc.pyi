"""LayerLens's native allocator: the multiple-choice knapsack with several budgets (csrc/rank_alloc.hpp).

The stub of the module csrc/bindings.cpp builds; tests/test_native.py holds it to the module's own signatures.
"""

from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike, NDArray

BUDGET_TOLERANCE: float
"""A plan fits budget k when its total cost is at most budgets[k] * (1 + BUDGET_TOLERANCE)."""
GAP_TOLERANCE: float
"""solve's plan is within this relative gap of the optimum, unless its search outgrows MAX_STATES."""
MAX_STATES: int
"""The most partial plans solve's search keeps after each site."""

def build_info() -> str:
    """Compiler, language standard and pybind11 version of this build."""

def check(
    values: ArrayLike,
    costs: ArrayLike,
    offsets: ArrayLike,
    budgets: ArrayLike,
    budget_names: Iterable[object] | None = None,
) -> None:
    """Raise ValueError, in one line, on the first defect of the problem that solve() would refuse: array
    shapes, offsets, numbers that are not finite and >= 0, a budget that even the cheapest option at every
    site overruns. budget_names, if given, name the budgets in messages."""

def solve(
    values: ArrayLike,
    costs: ArrayLike,
    offsets: ArrayLike,
    budgets: ArrayLike,
    budget_names: Iterable[object] | None = None,
) -> tuple[NDArray[np.int64], float]:
    """Choose one option per site maximising the total value with every budget kept.

    values: float64[rows]; costs: float64[rows, m]; offsets: int64[n + 1], site i's options being rows
    offsets[i] .. offsets[i+1]-1; budgets: float64[m]; budget_names: m names for messages, or None to
    number the budgets. Returns (choice, objective): choice is int64[n], the option chosen at each site
    counted within the site. Raises ValueError on invalid input (as check() does) or when no plan fits."""
