"""One option per site under several budgets: the multiple-choice knapsack.

Each site (a layer) offers options (a method and size), each with a value and one cost per budget
(parameters, FLOPs, ...). A plan picks exactly one option per site; it fits budget k when its total
cost is at most ``budgets[k] * (1 + BUDGET_TOLERANCE)`` (the slack only absorbs rounding in sums of costs).
`allocate` finds the plan of greatest total value, to within ``GAP_TOLERANCE`` (0.05%), with the native
solver, and raises ValueError on invalid input and when no plan fits.

A thin wrapper: `flatten` turns the nested lists into the native solver's flat arrays, checking only their
nesting (which the solver never sees); the solver (csrc/rank_alloc.cpp) checks everything else, once, and
both constants are its own. Its references, scipy's MILP and a greedy baseline, are in
tests/allocator_reference.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from layerlens import _rank_alloc

BUDGET_TOLERANCE: float = _rank_alloc.BUDGET_TOLERANCE
GAP_TOLERANCE: float = _rank_alloc.GAP_TOLERANCE


@dataclass(frozen=True)
class Allocation:
    choice: tuple[int, ...]  # the option chosen at each site, counted within the site
    objective: float  # total value
    totals: tuple[float, ...]  # cost used, per budget


class Flat(NamedTuple):
    """A problem as the native solver takes it: site i's options are rows offsets[i] .. offsets[i+1]-1."""

    values: np.ndarray  # float64[rows]
    costs: np.ndarray  # float64[rows, budgets]
    offsets: np.ndarray  # int64[sites + 1]
    budgets: np.ndarray  # float64[budgets]


def allocate(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[Sequence[float]]],
    budgets: Sequence[float],
    budget_names: Sequence[str] | None = None,
) -> Allocation:
    """The plan of greatest value that fits every budget, to within a relative gap of 5e-4: no plan that
    fits is better by more than 0.05%, unless the native search outgrows its width, when it is the best
    plan found. Deterministic. On large problems (hundreds of sites and more) the native solver mostly
    stops as soon as its Lagrangian bound proves a plan within the gap.

    values[i][j] is option j's value at site i and costs[i][j][k] its cost against budgets[k];
    budget_names, if given, name the budgets in error messages.
    """
    flat = flatten(values, costs, budgets)
    choice, _ = _rank_alloc.solve(*flat, budget_names)
    return allocation(choice, flat)


def flatten(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[Sequence[float]]],
    budgets: Sequence[float],
) -> Flat:
    """The nested lists as flat arrays, or ValueError if they do not nest alike: budgets flat, one list of
    values and one of cost vectors per site, as many of each, and one cost per budget in each vector. The
    numbers themselves are the native solver's to check (`_rank_alloc.check`)."""
    b = np.asarray(budgets, dtype=np.float64)
    if b.ndim != 1:
        raise ValueError(f"budgets must be a flat sequence of numbers, got shape {b.shape}")
    m = len(b)
    if len(costs) != len(values):
        raise ValueError(f"costs has {len(costs)} sites but values has {len(values)}")
    flat_values: list[float] = []
    flat_costs: list[Sequence[float]] = []
    offsets = [0]
    for i, (site_values, site_costs) in enumerate(zip(values, costs)):
        if len(site_costs) != len(site_values):
            raise ValueError(f"site {i} has {len(site_values)} values but {len(site_costs)} cost vectors")
        for j, cost in enumerate(site_costs):
            if len(cost) != m:
                raise ValueError(f"site {i}, option {j} has {len(cost)} costs but there are {m} budgets")
        flat_values.extend(site_values)
        flat_costs.extend(site_costs)
        offsets.append(len(flat_values))
    v = np.asarray(flat_values, dtype=np.float64)
    c = np.asarray(flat_costs, dtype=np.float64).reshape(len(v), m)
    return Flat(v, c, np.asarray(offsets, dtype=np.int64), b)


def allocation(choice: Sequence[int] | np.ndarray, flat: Flat) -> Allocation:
    """The Allocation of a choice (an option per site, counted within the site): its value and costs."""
    rows = flat.offsets[:-1] + np.asarray(choice, dtype=np.int64)
    return Allocation(
        choice=tuple(int(j) for j in choice),
        objective=float(flat.values[rows].sum()),
        totals=tuple(float(t) for t in flat.costs[rows].sum(axis=0)),
    )
