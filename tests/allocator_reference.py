"""References for the native allocator, kept out of the installed package: scipy's MILP, exact and slow,
which the parity tests (tests/test_allocator.py) hold `allocate` to, and a greedy baseline, not exact, for
experiments/allocator_bench.py. Both take `allocate`'s nested lists, refuse what it refuses with the same
messages (the native `_rank_alloc.check`), and decide on their own whether any plan fits.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult
from scipy.optimize import milp as scipy_milp
from scipy.sparse import csr_array

from layerlens import _rank_alloc
from layerlens.planning.allocator import BUDGET_TOLERANCE, Allocation, Flat, allocation, flatten

JOINTLY_INFEASIBLE = "no plan fits all budgets together (each budget alone can be met)"


def checked(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[Sequence[float]]],
    budgets: Sequence[float],
    budget_names: Sequence[str] | None = None,
) -> Flat:
    """The problem flattened as `allocate` flattens it, after the native solver's own checks."""
    flat = flatten(values, costs, budgets)
    _rank_alloc.check(*flat, budget_names)
    return flat


def milp(flat: Flat, time_limit: float | None = None) -> OptimizeResult:
    """scipy's MILP (HiGHS) on the model of the problem: a binary x_ij per option, one option per site, and
    one inequality per budget, with the native solver's tolerance; solved to optimality (mip_rel_gap 0) or
    until time_limit seconds. HiGHS's own feasibility tolerance (1e-6) applies."""
    v, c, offsets, b = flat
    n, rows = len(offsets) - 1, len(v)
    site = np.repeat(np.arange(n), np.diff(offsets))
    one_per_site = LinearConstraint(csr_array((np.ones(rows), (site, np.arange(rows))), shape=(n, rows)), 1, 1)
    within_budgets = LinearConstraint(c.T, -np.inf, b * (1 + BUDGET_TOLERANCE))
    options = {"mip_rel_gap": 0, **({"time_limit": time_limit} if time_limit is not None else {})}
    return scipy_milp(
        -v,
        constraints=[one_per_site, within_budgets] if len(b) else [one_per_site],
        integrality=np.ones(rows),
        bounds=Bounds(0, 1),
        options=options,
    )


def allocate_milp(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[Sequence[float]]],
    budgets: Sequence[float],
    budget_names: Sequence[str] | None = None,
) -> Allocation:
    """`allocate` by `milp`: the optimum itself. Slow; the reference of the parity tests."""
    flat = checked(values, costs, budgets, budget_names)
    result = milp(flat)
    if result.status == 2:
        raise ValueError(JOINTLY_INFEASIBLE)
    if not result.success:
        raise RuntimeError(f"scipy MILP failed: {result.message}")
    offsets = flat.offsets
    return allocation([int(np.argmax(result.x[start:end])) for start, end in itertools.pairwise(offsets)], flat)


def allocate_greedy(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[Sequence[float]]],
    budgets: Sequence[float],
    budget_names: Sequence[str] | None = None,
) -> Allocation:
    """A greedy baseline for benchmarks, not exact: it may fall well short of the optimum. Starts from each
    site's cheapest option, weighing budget k's cost by 1 / budgets[k] (1 for a zero budget; ties to the
    more valuable); then, while one exists, takes the upgrade (a site's move to an option of more value)
    that keeps every budget and adds the most value per unit of weighted cost. Raises ValueError as
    `allocate` does on invalid input, and when its starting plan does not fit."""
    flat = checked(values, costs, budgets, budget_names)
    rows = _Greedy(*flat).run()
    return allocation(rows - flat.offsets[:-1], flat)


class _Greedy:
    """allocate_greedy's state: the row chosen at each site and the costs of those rows."""

    def __init__(self, v, c, offsets, b):
        self.v, self.c, self.offsets = v, c, offsets
        self.cap = b * (1 + BUDGET_TOLERANCE)
        self.weight = c @ (1 / np.where(b > 0, b, 1.0))
        self.rows = np.array(
            [
                start + np.lexsort((-v[start:end], self.weight[start:end]))[0]
                for start, end in itertools.pairwise(offsets)
            ],
            dtype=np.int64,
        )
        self.used = c[self.rows].sum(axis=0)
        if (self.used > self.cap).any():
            raise ValueError(
                "the greedy baseline found no plan that fits all budgets together: its start, the "
                "cheapest option at every site by weighted cost, overruns one"
            )

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
