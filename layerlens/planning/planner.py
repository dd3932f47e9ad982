"""Utilities and costs in, a plan out: the options of every site, valued and allocated under the budgets."""

from dataclasses import dataclass, field, replace

from layerlens.errors import LayerLensError
from layerlens.methods import METHODS, NONE, accepting
from layerlens.planning.allocator import BUDGET_TOLERANCE, allocate
from layerlens.planning.choices import COST_NAMES, TRAIN_TIME, Choice, Plan
from layerlens.planning.costs import Costs, Depth, SiteSpec, Workload, option_costs
from layerlens.planning.step_times import StepTimes
from layerlens.planning.utilities import PROFILED, UTILITIES
from layerlens.validation import at_least, is_number, require_choice, require_int, require_positive, shown

TIME_MODELS = ("analytic", "measured")


def _default_sizes() -> dict[str, list[int]]:
    return {name: list(method.sizes) for name, method in METHODS.items()}


@dataclass
class PlannerSettings:
    sizes: dict[str, list[int]] = field(default_factory=_default_sizes)  # per method; [] leaves it out
    gain_exponent: float = 0.5  # an option's value: site utility * size ** gain_exponent (concave for < 1)
    flops_per_s: float = 2.0e10  # throughput that turns an option's FLOPs into latency
    # What sites are valued by: the profile, or a control that ignores it (see layerlens.planning.utilities).
    utility: str = PROFILED
    utility_seed: int = 0  # utility=random: the permutation
    kind_prior: dict[str, float] = field(default_factory=dict)  # utility=kind_depth: a constant per site kind
    # Site kind -> the methods offered at its sites, among which (and their sizes) the allocator chooses; a kind
    # not named is offered its default method(s) (see layerlens.methods.methods_for).
    menu: dict[str, list[str]] = field(default_factory=dict)
    # Method -> what its options are worth against another's of the same size: the option's value is multiplied by
    # it (1 where not named; unmeasured: the default menu offers one method a site).
    method_value: dict[str, float] = field(default_factory=dict)
    # What prices training time: analytic (Depth's FLOP ratios, options' FLOPs at flops_per_s) or measured (step
    # times timed on this machine before planning, calibration_steps steps each: lens/calibration.py), cached in
    # calibration_dir per machine, model and batch shape.
    time_model: str = "analytic"
    calibration_steps: int = 8
    calibration_dir: str = "~/.cache/layerlens/calibration"

    def __post_init__(self):
        if not isinstance(self.sizes, dict):
            raise LayerLensError(
                f"baseline.planner.sizes must map methods ({', '.join(METHODS)}) to lists of sizes, got {self.sizes!r}"
            )
        for method, sizes in self.sizes.items():
            if method not in METHODS:
                raise LayerLensError(
                    f"baseline.planner.sizes: unknown method {method!r} (choose from: {', '.join(METHODS)})"
                )
            allowed = METHODS[method].size_range
            if not isinstance(sizes, (list, tuple)):
                raise LayerLensError(
                    f"baseline.planner.sizes.{method} must be a list of integers {allowed}, got {sizes!r}"
                )
            bad = [s for s in sizes if not METHODS[method].allows(s)]
            if bad:
                raise LayerLensError(f"baseline.planner.sizes.{method} must be integers {allowed}, got {bad[0]!r}")
        if not (is_number(self.gain_exponent) and 0 < self.gain_exponent <= 1):
            raise LayerLensError(f"baseline.planner.gain_exponent must be in (0, 1], got {self.gain_exponent!r}")
        require_positive("baseline.planner.flops_per_s", self.flops_per_s)
        require_choice("baseline.planner.utility", self.utility, list(UTILITIES))
        require_choice("baseline.planner.time_model", self.time_model, list(TIME_MODELS))
        require_int("baseline.planner.calibration_steps", self.calibration_steps, 1)
        require_int("baseline.planner.utility_seed", self.utility_seed, 0)
        if not isinstance(self.kind_prior, dict):
            raise LayerLensError(
                f"baseline.planner.kind_prior must map site kinds to constants, got {self.kind_prior!r}"
            )
        for kind, value in self.kind_prior.items():
            require_positive(f"baseline.planner.kind_prior.{kind}", value)
        self._check_menu()
        if not isinstance(self.method_value, dict):
            raise LayerLensError(
                f"baseline.planner.method_value must map methods to positive numbers, got {self.method_value!r}"
            )
        for method, value in self.method_value.items():
            if method not in METHODS:
                raise LayerLensError(
                    f"baseline.planner.method_value: unknown method {method!r} (choose from: {', '.join(METHODS)})"
                )
            require_positive(f"baseline.planner.method_value.{method}", value)

    def _check_menu(self) -> None:
        kinds = list(dict.fromkeys(kind for method in METHODS.values() for kind in method.kinds))
        if not isinstance(self.menu, dict):
            raise LayerLensError(f"baseline.planner.menu must map site kinds to lists of methods, got {self.menu!r}")
        for kind, methods in self.menu.items():
            field_name = f"baseline.planner.menu.{kind}"
            if kind not in kinds:
                raise LayerLensError(
                    f"baseline.planner.menu: site kind {kind!r} is accepted by no method "
                    f"(choose from: {', '.join(kinds)})"
                )
            accepted = [method.name for method in accepting(kind)]
            if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not methods:
                raise LayerLensError(
                    f"{field_name} must be a non-empty list of methods (choose from: "
                    f"{', '.join(accepted)}), got {methods!r}"
                )
            for i, method in enumerate(methods):
                if method not in accepted:
                    raise LayerLensError(
                        f"{field_name}: method {method!r} does not take {kind} sites "
                        f"(choose from: {', '.join(accepted)})"
                    )
                if method in methods[:i]:
                    raise LayerLensError(f"{field_name}: {method} is listed twice")
                if not self.sizes.get(method):
                    raise LayerLensError(
                        f"{field_name} offers {method}, which baseline.planner.sizes.{method} gives no sizes"
                    )


class NoPlanFits(LayerLensError):
    """No plan that adapts a site fits budget `name`: its limit must be at least `needed`."""

    def __init__(self, message: str, name: str, limit: float, needed: float, within_others: bool):
        super().__init__(message)
        self.name, self.limit, self.needed, self.within_others = name, limit, needed, within_others


def adapting_options(
    sites: list[SiteSpec], options: list[list[tuple[str, int]]], costs: list[list[Costs]]
) -> list[tuple[SiteSpec, str, Costs]]:
    """Every option that adapts a site: the site, the option named for messages, and its costs."""
    return [
        (site, f"{method} of size {size} at {site.name}", c)
        for site, opts, site_costs in zip(sites, options, costs)
        for (method, size), c in zip(opts, site_costs)
        if method != "none"
    ]


def no_sizes(sites: list[SiteSpec]) -> LayerLensError:
    methods = sorted({method for site in sites for method in site.methods()})
    return LayerLensError(
        f"baseline.planner.sizes must list a size for {' or '.join(methods)} (the methods of baseline.sites), got none"
    )


def check_feasible(
    sites: list[SiteSpec], options: list[list[tuple[str, int]]], costs: list[list[Costs]], budgets: dict[str, float]
) -> None:
    """Raise unless some option that adapts a site fits every budget, naming the binding budget and the
    smallest limit of it that would let one fit (with the other budgets as they are)."""
    candidates = [(label, c.as_dict()) for _, label, c in adapting_options(sites, options, costs)]
    if not candidates:
        raise no_sizes(sites)

    def fits(cost: dict[str, float], name: str) -> bool:
        return cost[name] <= budgets[name] * (1 + BUDGET_TOLERANCE)

    if any(all(fits(cost, name) for name in budgets) for _, cost in candidates):
        return
    for within_others in (False, True):
        for name, limit in budgets.items():
            pool = [
                (label, cost)
                for label, cost in candidates
                if not within_others or all(fits(cost, other) for other in budgets if other != name)
            ]
            if not pool:
                continue
            label, cost = min(pool, key=lambda item: item[1][name])
            if within_others or not fits(cost, name):
                others = " within the other budgets" if within_others else ""
                raise NoPlanFits(
                    f"budget.{name} must be >= {at_least(cost[name])} for any plan to fit{others} "
                    f"(the cheapest option: {label}), got {shown(limit)}",
                    name,
                    limit,
                    cost[name],
                    within_others,
                )
    raise LayerLensError(
        f"budget: no site option fits {', '.join(f'budget.{n}' for n in budgets)} together; raise several of them"
    )


def site_options(site: SiteSpec, settings: PlannerSettings) -> list[tuple[str, int]]:
    """Adapting nothing, then each method offered at the site (its own first) in each of its sizes."""
    return [("none", 0)] + [
        (method, size) for method in site.methods() for size in sorted(set(settings.sizes.get(method, [])))
    ]


def option_value(site: SiteSpec, method: str, size: int, settings: PlannerSettings) -> float:
    value = site.utility * size**settings.gain_exponent
    return value * settings.method_value[method] if method in settings.method_value else value


def make_plan(
    sites: list[SiteSpec],
    workload: Workload,
    budgets: dict[str, float],
    settings: PlannerSettings,
    depth: Depth | StepTimes | None = None,
) -> Plan:
    """The plan of greatest total value within the budgets. With `depth`, each plan's training time is estimated
    (Depth.fraction of full fine-tuning's, plus its sites' latency); a `train_time_pct` budget then prices how
    deep backpropagation runs, which no per-site cost can: one allocation per candidate lowest adapted layer,
    each with the latency its depth leaves, and the best of them is kept. Given measured `StepTimes` in place of
    the analytic Depth, both the depth's share and every option's latency are the measured ones."""
    unknown = set(budgets) - set(COST_NAMES) - {TRAIN_TIME}
    if unknown:
        raise LayerLensError(
            f"budget: unknown limit {sorted(unknown)[0]!r} (choose from: {', '.join(COST_NAMES)}, {TRAIN_TIME})"
        )
    if TRAIN_TIME in budgets and depth is None:
        raise LayerLensError(f"budget.{TRAIN_TIME} needs the model's depth to be priced (planner called without one)")
    options = [site_options(site, settings) for site in sites]
    costs = [
        [option_costs(site.seen_by(method), method, size, workload) for method, size in opts]
        for site, opts in zip(sites, options)
    ]
    if isinstance(depth, StepTimes):
        costs = [
            [
                replace(c, latency_ms=depth.latency_ms(method, site.kind, size)) if method != NONE else c
                for c, (method, size) in zip(site_costs, opts)
            ]
            for site, opts, site_costs in zip(sites, options, costs)
        ]
    if TRAIN_TIME not in budgets:
        plan = _allocate(sites, options, costs, budgets, settings)
        return _with_time(plan, workload, depth)
    limit = budgets[TRAIN_TIME]
    assert depth is not None  # a train_time_pct budget without one is refused above
    per_site = {name: value for name, value in budgets.items() if name != TRAIN_TIME}
    full_ms = depth.full_ft_step_ms(workload)
    plans, first_error = [], None
    for lowest in range(depth.layers):
        spare_ms = (limit / 100 - depth.fraction(lowest)) * full_ms
        if spare_ms < 0:
            continue
        kept = [opts if site.layer >= lowest else opts[:1] for site, opts in zip(sites, options)]
        kept_costs = [c[: len(opts)] for c, opts in zip(costs, kept)]
        try:
            plans.append(
                _allocate(
                    sites,
                    kept,
                    kept_costs,
                    {**per_site, "latency_ms": min(per_site.get("latency_ms", spare_ms), spare_ms)},
                    settings,
                    budgets,
                )
            )
        except LayerLensError as err:
            first_error = first_error or err
    if not plans:
        adapting = adapting_options(sites, options, costs)
        if not adapting:
            raise no_sizes(sites)
        needed, label = min(
            (100 * (depth.fraction(site.layer) + c.latency_ms / full_ms), label) for site, label, c in adapting
        )
        if first_error is not None and (limit >= needed or "latency_ms" in budgets):
            raise first_error  # another budget binds, or no site has an option
        raise NoPlanFits(
            f"budget.{TRAIN_TIME} must be >= {at_least(needed)} for any plan to fit (the cheapest "
            f"option in training time: {label}), got {shown(limit)}",
            TRAIN_TIME,
            limit,
            needed,
            False,
        )
    best = max(plans, key=lambda plan: plan.objective)  # of equals, max keeps the first: the lowest `lowest` allowed
    return _with_time(best, workload, depth)


def _allocate(
    sites: list[SiteSpec],
    options: list[list[tuple[str, int]]],
    costs: list[list[Costs]],
    limits: dict[str, float],
    settings: PlannerSettings,
    budgets: dict[str, float] | None = None,
) -> Plan:
    """One allocation under per-site `limits`; the plan records `budgets` (the limits as the user set them)."""
    check_feasible(sites, options, costs, limits)
    names = list(limits)
    try:
        allocation = allocate(
            values=[
                [option_value(site, method, size, settings) for method, size in opts]
                for site, opts in zip(sites, options)
            ],
            costs=[[[getattr(c, name) for name in names] for c in site_costs] for site_costs in costs],
            budgets=[limits[name] for name in names],
            budget_names=[f"budget.{name}" for name in names],
        )
    except ValueError as err:
        raise LayerLensError(f"planner: {err}") from None
    choices = [
        Choice(site.name, site.layer, site.kind, ",".join(site.methods()), *opts[j], site.utility, site_costs[j])
        for site, opts, site_costs, j in zip(sites, options, costs, allocation.choice)
    ]
    return Plan(choices, dict(limits if budgets is None else budgets), allocation.objective)


def _with_time(plan: Plan, workload: Workload, depth: Depth | StepTimes | None) -> Plan:
    """The plan with its estimated training time, % of full fine-tuning's (when the depth is known)."""
    if depth is None:
        return plan
    lowest = plan.lowest_adapted_layer()
    backbone = depth.fraction(depth.layers if lowest is None else lowest)
    latency = sum(c.costs.latency_ms for c in plan.choices) / depth.full_ft_step_ms(workload)
    plan.train_time_pct = 100 * (backbone + latency)
    return plan
