"""Utilities and costs in, a plan out: the options of every site, valued and allocated under the budgets."""

from dataclasses import dataclass, field

from layerlens.errors import LayerLensError
from layerlens.planning.allocator import allocate
from layerlens.planning.costs import METHODS, SiteSpec, Workload, option_costs
from layerlens.planning.plan import COST_NAMES, Choice, Plan


def _default_sizes() -> dict[str, list[int]]:
    return {"lora": list(range(1, 17)), "adapter": list(range(1, 17)), "prefix": list(range(1, 17))}


@dataclass
class PlannerSettings:
    sizes: dict[str, list[int]] = field(default_factory=_default_sizes)  # per method; [] leaves it out
    gain_exponent: float = 0.5  # an option's value: site utility * size ** gain_exponent (concave for < 1)
    flops_per_s: float = 2.0e10  # throughput that turns an option's FLOPs into latency

    def __post_init__(self):
        for method, sizes in self.sizes.items():
            if method not in METHODS:
                raise LayerLensError(f"baseline.planner.sizes: unknown method {method!r} (choose from: {', '.join(METHODS)})")
            bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1]
            if bad:
                raise LayerLensError(f"baseline.planner.sizes.{method}: sizes must be integers >= 1, got {bad[0]!r}")
        if not 0 < self.gain_exponent <= 1:
            raise LayerLensError(f"baseline.planner.gain_exponent must be in (0, 1], got {self.gain_exponent!r}")
        if not self.flops_per_s > 0:
            raise LayerLensError(f"baseline.planner.flops_per_s must be > 0, got {self.flops_per_s!r}")


def site_options(site: SiteSpec, settings: PlannerSettings) -> list[tuple[str, int]]:
    return [("none", 0)] + [(site.method, size) for size in sorted(set(settings.sizes.get(site.method, [])))]


def make_plan(sites: list[SiteSpec], workload: Workload, budgets: dict[str, float], settings: PlannerSettings) -> Plan:
    unknown = set(budgets) - set(COST_NAMES)
    if unknown:
        raise LayerLensError(f"budget: unknown limit {sorted(unknown)[0]!r} (choose from: {', '.join(COST_NAMES)})")
    options = [site_options(site, settings) for site in sites]
    costs = [[option_costs(site, method, size, workload) for method, size in opts] for site, opts in zip(sites, options)]
    names = list(budgets)
    try:
        allocation = allocate(
            values=[[site.utility * size**settings.gain_exponent for _, size in opts] for site, opts in zip(sites, options)],
            costs=[[[getattr(c, name) for name in names] for c in site_costs] for site_costs in costs],
            budgets=[budgets[name] for name in names],
            budget_names=[f"budget.{name}" for name in names],
        )
    except ValueError as err:
        raise LayerLensError(f"planner: {err}") from None
    choices = [
        Choice(site.name, site.layer, site.kind, site.method, *opts[j], site.utility, site_costs[j])
        for site, opts, site_costs, j in zip(sites, options, costs, allocation.choice)
    ]
    return Plan(choices, dict(budgets), allocation.objective)
