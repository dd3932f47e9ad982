"""LayerLensBaseline: profile every candidate site, plan a method and size per site within the budgets, apply the
plan; plan.json and its plot are written to the run's output folder."""

import logging
import os
import time
from collections.abc import Sized
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from peft.utils import CONFIG_NAME
from torch import nn

from layerlens.adaptation import AdaptContext, Adapted
from layerlens.budget import params_pct_too_small
from layerlens.errors import LayerLensError
from layerlens.lens.apply import apply_plan, placements, task_head
from layerlens.lens.calibration import calibrate, offered_options, typical_batches
from layerlens.lens.profiling import Profile, ProfileSettings, profile_sites, too_many_batches
from layerlens.lens.sites import SITE_KINDS, Site, discover_sites, encoder_layers
from layerlens.methods import Build, Menu, get_method, lora, methods_for
from layerlens.methods.linears import linear_shape
from layerlens.models.decoders import generates
from layerlens.planning.choices import Plan
from layerlens.planning.costs import Depth, SiteSpec, Workload
from layerlens.planning.planner import NoPlanFits, PlannerSettings, make_plan
from layerlens.planning.plot import plot_plan
from layerlens.planning.step_times import StepTimes
from layerlens.planning.utilities import planning_utilities
from layerlens.planning.validity import measured_gains, utility_validity
from layerlens.training.frozen_bottom import FrozenBottomCache, cacheable
from layerlens.validation import require_fraction, require_positive

PLAN_FILE, PLOT_FILE = "plan.json", "plan.png"
log = logging.getLogger(__name__)


class Planned(NamedTuple):
    sites: list[Site]
    profile: Profile
    plan: Plan
    seconds: float  # planning alone (the allocations), after profiling
    calibrate_s: float  # timing the machine's training steps (time_model=measured; 0 where read from its cache)


@dataclass
class LayerLensBaseline:
    """Profile every candidate site, plan a method and size per site within the budget, train that model."""

    name: str = "layerlens"
    lr: float = 1.5e-3
    sites: list[str] = field(default_factory=lambda: list(SITE_KINDS))
    profile: ProfileSettings | dict = field(default_factory=ProfileSettings)
    planner: PlannerSettings | dict = field(default_factory=PlannerSettings)
    lora_alpha_ratio: float = 2.0  # lora_alpha = ratio * rank at every site: the same scale for every rank
    lora_dropout: float = 0.1
    # Compute the frozen layers below the lowest adapted one once, without dropout, and reuse their output.
    cache_frozen_layers: bool = True
    # A gains JSONL of experiments/utility_validity.py (each site trained alone): the plan's record then carries the
    # Spearman correlation of the utilities it was made with to those measured gains (planning/validity.py).
    validity_gains: str | None = None

    def __post_init__(self):
        require_positive("baseline.lr", self.lr)
        require_positive("baseline.lora_alpha_ratio", self.lora_alpha_ratio)
        require_fraction("baseline.lora_dropout", self.lora_dropout)
        if not isinstance(self.sites, (list, tuple)):
            raise LayerLensError(
                f"baseline.sites must be a list of site kinds (choose from: {', '.join(SITE_KINDS)}), "
                f"got {self.sites!r}"
            )
        unknown = [kind for kind in self.sites if kind not in SITE_KINDS]
        if unknown or not self.sites:
            raise LayerLensError(
                f"baseline.sites: {str(unknown[0]) + ' is unknown' if unknown else 'none given'} "
                f"(choose from: {', '.join(SITE_KINDS)})"
            )
        repeated = [kind for i, kind in enumerate(self.sites) if kind in self.sites[:i]]
        if repeated:
            raise LayerLensError(f"baseline.sites: {repeated[0]} is listed twice")
        for key, settings in (("profile", ProfileSettings), ("planner", PlannerSettings)):
            value = getattr(self, key)
            if isinstance(value, dict):
                known = [f.name for f in fields(settings)]
                unknown = [name for name in value if name not in known]
                if unknown:
                    raise LayerLensError(
                        f"baseline.{key}: unknown setting {unknown[0]!r} (choose from: {', '.join(known)})"
                    )
                setattr(self, key, settings(**value))
            elif not isinstance(value, settings):
                raise LayerLensError(f"baseline.{key} must be a mapping of settings, got {value!r}")
        if self.validity_gains is not None:
            measured_gains(self.validity_gains)  # a bad file refused before profiling
        if self.planner.utility == "kind_depth":
            missing = [kind for kind in self.sites if kind not in self.planner.kind_prior]
            if missing:
                raise LayerLensError(
                    f"baseline.planner.kind_prior has no constant for site kind {missing[0]!r} "
                    "(utility kind_depth needs one for every kind in baseline.sites)"
                )
        unused = [kind for kind in self.planner.menu if kind not in self.sites]
        if unused:
            raise LayerLensError(
                f"baseline.planner.menu.{unused[0]}: site kind {unused[0]} is not in baseline.sites "
                f"({', '.join(self.sites)})"
            )
        for kind in self.sites:
            for method in methods_for(kind, self.offered()):
                both = [k for k in method.covers.get(kind, ()) if k in self.sites]
                if both:
                    raise LayerLensError(
                        f"baseline.planner.menu.{kind}: {method.name} on {kind} sites adapts their layer's "
                        f"{', '.join(method.covers[kind])}, which baseline.sites also lists ({both[0]}): leave "
                        f"{' and '.join(both)} out of baseline.sites or {method.name} off the menu"
                    )
        methods = sorted({method for kind in self.sites for method in self.methods(kind)})
        if not any(self.planner.sizes.get(method) for method in methods):
            raise LayerLensError(
                f"baseline.planner.sizes must list a size for {' or '.join(methods)} "
                "(the methods of baseline.sites), got none"
            )

    # __post_init__ turns a mapping given for profile or planner (a Hydra config's) into its settings: the methods
    # read them through these.
    @property
    def profile_settings(self) -> ProfileSettings:
        return cast(ProfileSettings, self.profile)

    @property
    def planner_settings(self) -> PlannerSettings:
        return cast(PlannerSettings, self.planner)

    def offered(self) -> Menu:
        """The methods offered: those the planner is given sizes for, and per site kind baseline.planner.menu's."""
        return Menu(
            tuple(method for method, sizes in self.planner_settings.sizes.items() if sizes),
            {kind: tuple(methods) for kind, methods in self.planner_settings.menu.items()},
        )

    def methods(self, kind: str) -> list[str]:
        """The methods offered at sites of `kind`, the first the one the site takes with no choice."""
        return [method.name for method in methods_for(kind, self.offered())]

    def check_task(self, task) -> None:
        """Checks that need the task: no size above the task setting that bounds its method's (a prefix no longer
        than the task's longest sequence)."""
        for method in dict.fromkeys(method for kind in self.sites for method in methods_for(kind, self.offered())):
            sizes = self.planner_settings.sizes.get(method.name, [])
            if method.bounded_by is not None and sizes and max(sizes) > getattr(task, method.bounded_by):
                raise LayerLensError(
                    f"baseline.planner.sizes.{method.name} must be <= task.{method.bounded_by} "
                    f"({getattr(task, method.bounded_by)}), got {max(sizes)}"
                )

    def plan(self, model: nn.Module, ctx: AdaptContext) -> Planned:
        sites = discover_sites(model, self.sites, self.offered())
        batches = ctx.train_batches()
        settings, planner = self.profile_settings, self.planner_settings
        if isinstance(batches, Sized) and len(batches) < settings.num_batches:
            raise LayerLensError(too_many_batches(settings.num_batches, len(batches)))
        profile = profile_sites(model, sites, batches, settings)
        utilities = planning_utilities(
            planner.utility,
            profile.utility(),
            [s.layer for s in sites],
            [s.kind for s in sites],
            planner.utility_seed,
            planner.kind_prior,
        )
        specs = [
            SiteSpec(s.name, s.layer, s.kind, s.method, s.d_in, s.d_out, float(u), self.others(s))
            for s, u in zip(sites, utilities)
        ]
        workload = Workload(
            profile.batch_size,
            profile.tokens_per_batch,
            profile.seq_len,
            cast(Any, model.config).num_attention_heads,
            planner.flops_per_s,
        )
        _, layers = encoder_layers(model)
        depth: Depth | StepTimes = Depth(
            len(layers), layer_flops(layers[0], profile.seq_len), ctx.epochs, self.caches(model)
        )
        calibrate_s = 0.0
        if planner.time_model == "measured":
            depth, calibrate_s = self.calibrate(model, sites, ctx)
        start = time.perf_counter()
        try:
            plan = make_plan(specs, workload, ctx.budget.limits(ctx.backbone_params), planner, depth)
        except NoPlanFits as err:
            if err.name == "params" and ctx.budget.params_field(ctx.backbone_params) == "budget.params_pct":
                purpose = "for any plan to fit" + (" within the other budgets" if err.within_others else "")
                raise LayerLensError(
                    params_pct_too_small(ctx.budget, err.needed, ctx.backbone_params, purpose, "option")
                ) from None
            raise
        return Planned(sites, profile, plan, time.perf_counter() - start, calibrate_s)

    def calibrate(self, model: nn.Module, sites: list[Site], ctx: AdaptContext) -> tuple[StepTimes, float]:
        """The machine's step times for this model (lens/calibration.py), on typical training batches: the first of a
        seed-0 pass over the training data, whatever the run's seed, so that every seed reads one calibration."""
        planner = self.planner_settings
        with torch.random.fork_rng():
            torch.manual_seed(0)
            batches = typical_batches(ctx.train_batches(), planner.calibration_steps + 1)
        build = Build(tuple(task_head(model)), self.lora_alpha_ratio, self.lora_dropout)
        return calibrate(
            model,
            batches,
            offered_options(sites, self.offered(), planner.sizes),
            self.offered(),
            build,
            ctx.epochs,
            self.caches(model),
            planner.calibration_steps,
            planner.calibration_dir,
            ctx.device,
        )

    def others(self, site: Site) -> tuple[tuple[str, int, int], ...]:
        """The methods offered at `site` besides its own, each with the site's (d_in, d_out) as it sees it."""
        return tuple(
            (name, *get_method(name).dims(site.module, site.profiled))
            for name in self.methods(site.kind)
            if name != site.method
        )

    def caches(self, model: nn.Module) -> bool:
        """Whether the frozen layers below the lowest adapted one are computed once (where the encoder allows it).
        Not for a causal LM: it generates, and the cache would store the states of every prefix it generates."""
        return self.cache_frozen_layers and cacheable(model) and not generates(model)

    def save(self, plan: Plan, sites: list[Site], folder: Path, model: nn.Module | None = None) -> list[Path]:
        """plan.json and its plot; a LoRA-only plan also as peft's adapter_config.json (LoraConfig.from_pretrained).
        `model`, before the plan is applied: needed where LoRA is planned on a block (its linears' names)."""
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{PLAN_FILE}.partial"  # renamed when whole: a process waiting for it reads all or nothing
        partial.write_text(plan.to_json())
        os.replace(partial, folder / PLAN_FILE)
        title = f"LayerLens plan: {len(plan.adapted())} of {len(plan.choices)} sites adapted"
        files = [folder / PLAN_FILE, plot_plan(plan, folder / PLOT_FILE, title)]
        if plan.method_counts().keys() == {lora.LORA.name}:
            chosen = [(site, size) for _, site, size in placements(plan, sites)]
            build = Build((), self.lora_alpha_ratio, self.lora_dropout)
            lora.peft_config(chosen, build, model).save_pretrained(str(folder))
            files.append(folder / CONFIG_NAME)
        return files

    def record(self, profile: Profile, plan: Plan) -> dict[str, float]:
        """The checks logged with a plan: the profile's split-half checks, the plan's, and, given measured gains
        (validity_gains), how well the utilities it was made with predict them."""
        record = {**profile.validation(), **plan.metrics()}
        if self.validity_gains is not None:
            utilities = {choice.site: choice.utility for choice in plan.choices}
            record.update(utility_validity(utilities, measured_gains(self.validity_gains)))
        return record

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapted:
        if ctx.reuse_plan:
            sites, metrics, files = discover_sites(model, self.sites, self.offered()), {}, []
            plan = Plan.from_json(read_plan(ctx.output_dir / PLAN_FILE, ctx.plan_wait_s))
        else:
            sites, profile, plan, plan_s, calibrate_s = self.plan(model, ctx)
            metrics = {**self.record(profile, plan), "time/plan_s": plan_s, "time/calibrate_s": calibrate_s}
            files = self.save(plan, sites, ctx.output_dir, model)
        caches = self.caches(model)  # asked of the model before the plan wraps it
        model = apply_plan(model, sites, plan, self.lora_alpha_ratio, self.lora_dropout, self.offered())
        frozen = plan.lowest_adapted_layer()
        if caches and frozen != 0:
            FrozenBottomCache(model, len(encoder_layers(model)[1]) if frozen is None else frozen)
        return Adapted(model, metrics, artifacts=files)


def read_plan(path: Path, wait_s: float = 0.0, poll_s: float = 0.5) -> str:
    """The text of the plan at `path`, waiting up to `wait_s` seconds for another process to write it."""
    deadline = time.monotonic() + wait_s
    while not path.is_file():
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait_s:g} s for global rank 0 to write it" if wait_s else ""
            raise LayerLensError(f"{path}: no plan there{waited}")
        time.sleep(poll_s)
    log.info("plan read from %s%s", path, ", written by global rank 0" if wait_s else "")
    return path.read_text()


def layer_flops(layer: nn.Module, seq_len: float) -> float:
    """Forward FLOPs per token of one encoder layer: its linear maps, and attention's scores and mixing."""
    shapes = [shape for m in layer.modules() if (shape := linear_shape(m)) is not None]
    hidden = shapes[0][0]
    return sum(2.0 * d_in * d_out for d_in, d_out in shapes) + 4.0 * seq_len * hidden
