"""One option per site under several budgets: the multiple-choice knapsack.

Each site (a layer) offers options (a method and size), each with a value and one cost per budget
(parameters, FLOPs, ...). A plan picks exactly one option per site; it fits budget k when its total
cost is at most ``budgets[k] * (1 + 1e-9)`` (the slack only absorbs rounding in sums of costs).
`allocate` finds the plan of greatest total value, to within 0.05%, with the native solver;
`allocate_milp` solves the same problem with scipy's MILP and is its reference; `allocate_greedy` is a
simple baseline, not exact. All raise ValueError on invalid input and when no plan fits.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from layerlens import _rank_alloc

BUDGET_TOLERANCE = 1e-9
JOINTLY_INFEASIBLE = "no plan fits all budgets together (each budget alone can be met)"


@dataclass(frozen=True)
class Allocation:
    choice: tuple[int, ...]  # the option chosen at each site, counted within the site
    objective: float  # total value
    totals: tuple[float, ...]  # cost used, per budget


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
    v, c, offsets, b = _arrays(values, costs, budgets, budget_names)
    choice, _ = _rank_alloc.solve(v, c, offsets, b)
    return _allocation(choice, v, c, offsets)


def allocate_milp(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[Sequence[float]]],
    budgets: Sequence[float],
    budget_names: Sequence[str] | None = None,
) -> Allocation:
    """`allocate` by scipy's MILP (HiGHS): a binary x_ij per option, one option per site, and one
    inequality per budget. Slow; a reference for tests. HiGHS's own feasibility tolerance (1e-6) applies."""
    v, c, offsets, b = _arrays(values, costs, budgets, budget_names)
    n, rows = len(offsets) - 1, len(v)
    site = np.repeat(np.arange(n), np.diff(offsets))
    one_per_site = LinearConstraint(csr_array((np.ones(rows), (site, np.arange(rows))), shape=(n, rows)), 1, 1)
    within_budgets = LinearConstraint(c.T, -np.inf, b * (1 + BUDGET_TOLERANCE))
    result = milp(
        -v,
        constraints=[one_per_site, within_budgets] if len(b) else [one_per_site],
        integrality=np.ones(rows),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0},
    )
    if result.status == 2:
        raise ValueError(JOINTLY_INFEASIBLE)
    if not result.success:
        raise RuntimeError(f"scipy MILP failed: {result.message}")
    choice = [int(np.argmax(result.x[start:end])) for start, end in zip(offsets[:-1], offsets[1:])]
    return _allocation(choice, v, c, offsets)


def allocate_greedy(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[Sequence[float]]],
    budgets: Sequence[float],
    budget_names: Sequence[str] | None = None,
) -> Allocation:
    """A greedy baseline for benchmarks, not exact: it may fall well short of the optimum. Starts from each
    site's cheapest option, weighing budget k's cost by 1 / budgets[k] (1 for a zero budget; ties to the
    more valuable); then, while one exists, takes the upgrade (a site's move to an option of more value) that keeps every
    budget and adds the most value per unit of weighted cost. Raises ValueError as `allocate` does on
    invalid input, and when its starting plan does not fit."""
    v, c, offsets, b = _arrays(values, costs, budgets, budget_names)
    rows = _Greedy(v, c, offsets, b).run()
    return _allocation(rows - offsets[:-1], v, c, offsets)


class _Greedy:
    """allocate_greedy's state: the row chosen at each site and the costs of those rows."""

    def __init__(self, v, c, offsets, b):
        self.v, self.c, self.offsets = v, c, offsets
        self.cap = b * (1 + BUDGET_TOLERANCE)
        self.weight = c @ (1 / np.where(b > 0, b, 1.0))
        self.rows = np.array([start + np.lexsort((-v[start:end], self.weight[start:end]))[0]
                              for start, end in zip(offsets[:-1], offsets[1:])], dtype=np.int64)
        self.used = c[self.rows].sum(axis=0)
        if (self.used > self.cap).any():
            raise ValueError("the greedy baseline found no plan that fits all budgets together: its start, the "
                             "cheapest option at every site by weighted cost, overruns one")

    def fits(self, i, rows):
        return (self.used - self.c[self.rows[i]] + self.c[rows] <= self.cap).all(axis=-1)

    def best_upgrade(self, i):
        """(-value per weighted cost, -value added, site, row) of site i's best upgrade that fits, or None."""
        rows = np.arange(self.offsets[i], self.offsets[i + 1])
        gain = self.v[rows] - self.v[self.rows[i]]
        extra = self.weight[rows] - self.weight[self.rows[i]]
        ok = (gain > 0) & self.fits(i, rows)
        if not ok.any():
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(extra > 0, gain / extra, np.inf)
        j = np.flatnonzero(ok)[np.lexsort((-gain[ok], -ratio[ok]))[0]]
        return -ratio[j], -gain[j], i, int(rows[j])

    def run(self):
        """Upgrades from a heap of each site's best (one entry per site, redone whenever it is popped: after
        the move, or because it no longer fits). When the heap runs dry every site is looked at again (an
        upgrade that lowers a cost can make room elsewhere), until no site has an upgrade that fits. Each
        move adds value, so it ends."""
        while True:
            heap = [u for u in map(self.best_upgrade, range(len(self.rows))) if u is not None]
            if not heap:
                return self.rows
            heapq.heapify(heap)
            while heap:
                _, _, i, row = heapq.heappop(heap)
                if self.fits(i, row):
                    self.used += self.c[row] - self.c[self.rows[i]]
                    self.rows[i] = row
                upgrade = self.best_upgrade(i)
                if upgrade is not None:
                    heapq.heappush(heap, upgrade)


def _arrays(values, costs, budgets, budget_names):
    """Checks the problem and flattens it to (values, costs, offsets, budgets) for the native solver."""
    b = np.asarray(budgets, dtype=float)
    if b.ndim != 1:
        raise ValueError(f"budgets must be a flat sequence of numbers, got shape {b.shape}")
    m = len(b)
    if budget_names is not None and len(budget_names) != m:
        raise ValueError(f"budget_names has {len(budget_names)} names but there are {m} budgets")

    def label(k):
        return f"budget {budget_names[k]!r}" if budget_names is not None else f"budget {k}"

    for k, x in enumerate(b):
        if not (np.isfinite(x) and x >= 0):
            raise ValueError(f"{label(k)} is {x}; budgets must be finite and >= 0")
    if len(values) == 0:
        raise ValueError("no sites: values is empty")
    if len(costs) != len(values):
        raise ValueError(f"costs has {len(costs)} sites but values has {len(values)}")
    flat_values, flat_costs, offsets = [], [], [0]
    for i, (site_values, site_costs) in enumerate(zip(values, costs)):
        if len(site_values) == 0:
            raise ValueError(f"site {i} has no options")
        if len(site_costs) != len(site_values):
            raise ValueError(f"site {i} has {len(site_values)} values but {len(site_costs)} cost vectors")
        for j, cost in enumerate(site_costs):
            if len(cost) != m:
                raise ValueError(f"site {i}, option {j} has {len(cost)} costs but there are {m} budgets")
        flat_values.extend(site_values)
        flat_costs.extend(site_costs)
        offsets.append(len(flat_values))
    v = np.asarray(flat_values, dtype=float)
    c = np.asarray(flat_costs, dtype=float).reshape(len(v), m)
    offsets = np.asarray(offsets, dtype=np.int64)

    def where(row):
        i = int(np.searchsorted(offsets, row, side="right")) - 1
        return f"at site {i}, option {row - offsets[i]}"

    bad = ~(np.isfinite(v) & (v >= 0))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"value {where(row)} is {v[row]}; values must be finite and >= 0")
    bad = ~(np.isfinite(c) & (c >= 0))
    if bad.any():
        row, k = np.argwhere(bad)[0]
        raise ValueError(f"cost {label(k)} {where(row)} is {c[row, k]}; costs must be finite and >= 0")
    cheapest = np.minimum.reduceat(c, offsets[:-1], axis=0).sum(axis=0)
    for k in range(m):
        if cheapest[k] > b[k] * (1 + BUDGET_TOLERANCE):
            raise ValueError(
                f"no plan fits {label(k)}: the cheapest option at every site already costs {cheapest[k]:g} > {b[k]:g}"
            )
    return v, c, offsets, b


def _allocation(choice, values, costs, offsets) -> Allocation:
    rows = offsets[:-1] + np.asarray(choice, dtype=np.int64)
    return Allocation(
        choice=tuple(int(j) for j in choice),
        objective=float(values[rows].sum()),
        totals=tuple(float(t) for t in costs[rows].sum(axis=0)),
    )
