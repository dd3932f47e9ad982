from dataclasses import dataclass, field
from pathlib import Path

from peft.utils import CONFIG_NAME
from torch import nn

from layerlens.baselines.base import AdaptContext, Adapted
from layerlens.baselines.validation import require_fraction, require_positive
from layerlens.building import apply_plan, lora_config
from layerlens.errors import LayerLensError
from layerlens.planning.costs import SiteSpec, Workload
from layerlens.planning.plan import Plan
from layerlens.planning.planner import PlannerSettings, make_plan
from layerlens.planning.plot import plot_plan
from layerlens.profiling import Profile, ProfileSettings, profile_sites
from layerlens.sites import BERT_SITES, Site, discover_sites

PLAN_FILE, PLOT_FILE = "plan.json", "plan.png"


@dataclass
class LayerLensBaseline:
    """Profile every candidate site, plan a method and size per site within the budget, train that model."""

    name: str = "layerlens"
    lr: float = 1.5e-3
    sites: list[str] = field(default_factory=lambda: list(BERT_SITES))
    profile: ProfileSettings | dict = field(default_factory=ProfileSettings)
    planner: PlannerSettings | dict = field(default_factory=PlannerSettings)
    lora_alpha_ratio: float = 2.0  # lora_alpha = ratio * rank at every site: the same scale for every rank
    lora_dropout: float = 0.1

    def __post_init__(self):
        require_positive("baseline.lr", self.lr)
        require_positive("baseline.lora_alpha_ratio", self.lora_alpha_ratio)
        require_fraction("baseline.lora_dropout", self.lora_dropout)
        unknown = [kind for kind in self.sites if kind not in BERT_SITES]
        if unknown or not self.sites:
            raise LayerLensError(f"baseline.sites: {unknown[0] + ' is unknown' if unknown else 'none given'} "
                                 f"(choose from: {', '.join(BERT_SITES)})")
        if isinstance(self.profile, dict):
            self.profile = ProfileSettings(**self.profile)
        if isinstance(self.planner, dict):
            self.planner = PlannerSettings(**self.planner)

    def plan(self, model: nn.Module, ctx: AdaptContext) -> tuple[list[Site], Profile, Plan]:
        sites = discover_sites(model, self.sites)
        profile = profile_sites(model, sites, ctx.train_batches(), self.profile)
        specs = [SiteSpec(s.name, s.layer, s.kind, s.method, s.d_in, s.d_out, float(u))
                 for s, u in zip(sites, profile.utility())]
        workload = Workload(profile.batch_size, profile.tokens_per_batch, profile.seq_len,
                            model.config.num_attention_heads, self.planner.flops_per_s)
        return sites, profile, make_plan(specs, workload, ctx.budget.limits(ctx.backbone_params), self.planner)

    def save(self, plan: Plan, sites: list[Site], folder: Path) -> list[Path]:
        """plan.json and its plot; a LoRA-only plan also as peft's adapter_config.json (LoraConfig.from_pretrained)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PLAN_FILE).write_text(plan.to_json())
        title = f"LayerLens plan: {len(plan.adapted())} of {len(plan.choices)} sites adapted"
        files = [folder / PLAN_FILE, plot_plan(plan, folder / PLOT_FILE, title)]
        if plan.method_counts().keys() == {"lora"}:
            lora_config(plan, sites, self.lora_alpha_ratio, self.lora_dropout).save_pretrained(str(folder))
            files.append(folder / CONFIG_NAME)
        return files

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapted:
        if ctx.reuse_plan:
            sites, metrics, files = discover_sites(model, self.sites), {}, []
            plan = Plan.from_json((ctx.output_dir / PLAN_FILE).read_text())
        else:
            sites, profile, plan = self.plan(model, ctx)
            metrics = {**profile.validation(), **plan.metrics()}
            files = self.save(plan, sites, ctx.output_dir)
        model = apply_plan(model, sites, plan, self.lora_alpha_ratio, self.lora_dropout)
        return Adapted(model, metrics, artifacts=files)
