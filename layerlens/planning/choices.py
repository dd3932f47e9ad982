"""A plan: one method and size per site, its costs against the budgets, and checks of its quality."""

import json
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
from scipy.stats import spearmanr

from layerlens.planning.allocator import BUDGET_TOLERANCE
from layerlens.planning.costs import Costs

COST_NAMES = ("params", "flops", "memory_mb", "latency_ms")
TRAIN_TIME = "train_time_pct"  # a budget on the whole plan, not a sum over sites: see Depth in costs.py


@dataclass(frozen=True)
class Choice:
    site: str
    layer: int
    kind: str
    allowed: str  # the methods offered at this site (besides none), comma-separated: with one, its name
    method: str  # "none" or the method applied
    size: int  # its method's size (Method.size_name: a rank, a width, ...); 0 for none
    utility: float
    costs: Costs


@dataclass
class Plan:
    choices: list[Choice]
    budgets: dict[str, float]  # the limits the plan was made under (unset ones left out)
    objective: float
    # Estimated training time, % of full fine-tuning's: the backbone at the plan's depth plus the sites' latency.
    train_time_pct: float | None = None

    def totals(self) -> dict[str, float]:
        totals = {name: float(sum(getattr(c.costs, name) for c in self.choices)) for name in COST_NAMES}
        if self.train_time_pct is not None:
            totals[TRAIN_TIME] = self.train_time_pct
        return totals

    def lowest_adapted_layer(self) -> int | None:
        """The lowest layer with an adapted site (None if none is): every layer below it stays frozen."""
        return min((c.layer for c in self.adapted()), default=None)

    def utilisation(self) -> dict[str, float]:
        totals = self.totals()
        return {name: totals[name] / limit for name, limit in self.budgets.items()}

    def within_budgets(self, rel_tol: float = BUDGET_TOLERANCE) -> bool:
        totals = self.totals()
        return all(totals[name] <= limit * (1 + rel_tol) for name, limit in self.budgets.items())

    def adapted(self) -> list[Choice]:
        return [c for c in self.choices if c.method != "none"]

    def method_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.adapted():
            counts[c.method] = counts.get(c.method, 0) + 1
        return counts

    def rank_utility_spearman(self) -> float:
        """Spearman correlation of utility and size over every site (none counts as size 0)."""
        sizes = [c.size for c in self.choices]
        if len(set(sizes)) < 2:
            return float("nan")
        return float(spearmanr([c.utility for c in self.choices], sizes).statistic)

    def rank_utility_consistency(self) -> dict[str, float]:
        """Per method: the share of pairs of sites using it whose sizes are ordered like their utilities."""
        shares = {}
        for method in self.method_counts():
            chosen = [c for c in self.adapted() if c.method == method]
            pairs = list(combinations(chosen, 2))
            ordered = [(a.utility - b.utility) * (a.size - b.size) >= 0 for a, b in pairs]
            shares[method] = float(np.mean(ordered)) if pairs else 1.0
        return shares

    def metrics(self) -> dict[str, float]:
        """Flat metrics for tracking: totals, budget utilisation and the quality checks."""
        out = {f"plan/{name}": value for name, value in self.totals().items()}
        out.update({f"plan/utilisation/{name}": value for name, value in self.utilisation().items()})
        out.update({f"plan/sites/{method}": float(n) for method, n in self.method_counts().items()})
        out.update({f"plan/consistency/{method}": share for method, share in self.rank_utility_consistency().items()})
        out["plan/method_diversity"] = float(len(self.method_counts()))
        out["plan/rank_utility_spearman"] = self.rank_utility_spearman()
        out["plan/objective"] = self.objective
        lowest = self.lowest_adapted_layer()
        if lowest is not None:
            out["plan/lowest_adapted_layer"] = float(lowest)
        return out

    def to_json(self) -> str:
        """The summary first, then one line per site: readable at hundreds of sites."""
        summary = json.dumps(
            {
                "budgets": self.budgets,
                "totals": self.totals(),
                "utilisation": self.utilisation(),
                "objective": self.objective,
                "lowest_adapted_layer": self.lowest_adapted_layer(),
                "train_time_pct": self.train_time_pct,
                "method_counts": self.method_counts(),
                "method_diversity": len(self.method_counts()),
                "rank_utility_spearman": self.rank_utility_spearman(),
                "rank_utility_consistency": self.rank_utility_consistency(),
            },
            indent=2,
        )
        sites = ",\n".join("    " + json.dumps({**asdict(c), "costs": c.costs.as_dict()}) for c in self.choices)
        return f'{summary[:-2]},\n  "sites": [\n{sites}\n  ]\n}}\n'

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        choices = [Choice(**{**c, "costs": Costs(**c["costs"])}) for c in data["sites"]]
        return cls(choices, data["budgets"], data["objective"], data.get("train_time_pct"))
