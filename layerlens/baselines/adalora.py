"""AdaLoRA through peft: SVD-shaped adapters whose ranks are pruned by importance while training.

The final budget is LayerLens's parameter budget. peft budgets AdaLoRA in ranks (triplets of a singular value
and its two singular vectors); a rank of a module with inputs d_in and outputs d_out costs d_in + d_out + 1
parameters, so a rank count cannot bound parameters when modules differ in shape (a BERT feed-forward rank
costs 2.5 times an attention one). With a parameter limit, the allocator below keeps peft's importance scores,
cubic schedule and masking, and only changes which triplets survive a masking: the highest-scoring ones whose
summed cost fits the scheduled parameter budget, which ends at the limit. Without a limit it is peft's own.
"""

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import cast

import torch
from peft import AdaLoraConfig, AdaLoraModel, PeftModel, TaskType, get_peft_model
from peft.tuners.adalora.layer import RankAllocator
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from layerlens.adaptation import AdaptContext, Adapted
from layerlens.budget import params_pct_too_small
from layerlens.errors import LayerLensError
from layerlens.lens.sites import layer_targets
from layerlens.methods.linears import linear_shape
from layerlens.models.decoders import peft_task_type
from layerlens.models.families import LINEAR_KINDS, check_kinds
from layerlens.training.callbacks import AdaLoraSchedule
from layerlens.validation import (
    is_number,
    require_fraction,
    require_int,
    require_nonnegative,
    require_positive,
)

log = logging.getLogger(__name__)


def rank_costs(model: nn.Module, adapter: str = "default") -> dict[str, int]:
    """Parameters per rank of each adapted module (d_in + d_out + 1), keyed by its lora_E parameter's name."""
    params = dict(model.named_parameters())
    return {
        name.replace("lora_A", "lora_E"): p.shape[1] + params[name.replace("lora_A", "lora_B")].shape[0] + 1
        for name, p in params.items()
        if f"lora_A.{adapter}" in name
    }


def predicted_rank_costs(model: nn.Module, config: AdaLoraConfig, adapter: str = "default") -> dict[str, int]:
    """`rank_costs` of the model peft would build from `config`, read before wrapping it (to choose init_r)."""
    config = copy.copy(config)
    config.modules_to_save = ["classifier", "score"]  # what peft's SEQ_CLS model adds, and never adapts
    return {
        f"{name}.lora_E.{adapter}": sum(shape) + 1
        for name, module in model.named_modules()
        if (shape := linear_shape(module)) is not None and check_target_module_exists(config, name)
    }


class ParamBudgetAllocator(RankAllocator):
    """peft's RankAllocator whose masking keeps the best triplets that fit a parameter budget, not a rank count.

    peft's schedule still yields a rank budget b from init_bgt (every rank) down to target_bgt; it is mapped
    linearly onto parameters, from every rank's parameters down to `params_limit`.
    """

    def __init__(self, model, peft_config, adapter_name, costs: dict[str, int], target_rank: int, params_limit: int):
        super().__init__(model, peft_config, adapter_name)
        self.costs, self.params_limit = costs, params_limit
        self.target_bgt = target_rank  # peft sets target_r x modules; any total is allowed
        self.init_params = sum(cost * model.get_parameter(name).shape[0] for name, cost in costs.items())

    def params_budget(self, budget: int) -> float:
        if budget <= self.target_bgt:
            return self.params_limit
        share = (budget - self.target_bgt) / (self.init_bgt - self.target_bgt)
        return self.params_limit + share * (self.init_params - self.params_limit)

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """Each module's score per triplet, as peft's mask_to_budget computes it."""
        scores = {}
        for name_m in self.name_set:
            ipt_a = self._element_score(name_m % "lora_A").mean(dim=1, keepdim=True)
            ipt_b = self._element_score(name_m % "lora_B").mean(dim=0).view(-1, 1)
            scores[name_m % "lora_E"] = self._combine_ipt(
                self._element_score(name_m % "lora_E"), torch.cat([ipt_a, ipt_b], dim=1)
            )
        return scores

    def mask_to_budget(self, model, budget):
        scores = self.triplet_scores()
        names = list(scores)
        flat = torch.cat([scores[n] for n in names])
        costs = torch.cat([torch.full_like(scores[n], float(self.costs[n]), dtype=torch.float64) for n in names])
        order = torch.argsort(flat, descending=True, stable=True)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[order] = torch.cumsum(costs[order].cpu(), 0).to(flat.device) <= self.params_budget(budget)
        rank_pattern = {}
        with torch.no_grad():
            for name, kept in zip(names, keep.split([len(scores[n]) for n in names])):
                model.get_parameter(name).masked_fill_(~kept.view(-1, 1), 0.0)
                rank_pattern[name] = kept.tolist()
        return rank_pattern


@dataclass
class AdaLoraBaseline:
    """AdaLoRA (peft) whose final budget is the run's parameter budget; see the module docstring.

    `init_r` is a floor on the initial rank per module: the rank used is the larger of it and
    ceil(init_ratio x the average final rank). `target_r` is the average final rank when the budget sets no
    parameter limit. `tinit` and `tfinal` are fractions of the planned optimiser steps. `target_kinds` names site
    kinds, adapted in every layer at the modules the model's family keeps them in (layerlens/models/families.py);
    by default every linear of each encoder layer, not the pooler.
    """

    name: str = "adalora"
    lr: float = 1.5e-3
    init_r: int = 4
    init_ratio: float = 1.5
    target_r: int = 8
    tinit: float = 0.1
    tfinal: float = 0.5
    deltaT: int = 10
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.1
    lora_alpha: float = 16
    lora_dropout: float = 0.1
    target_kinds: list[str] = field(default_factory=lambda: list(LINEAR_KINDS))

    def __post_init__(self):
        require_positive("baseline.lr", self.lr)
        require_int("baseline.init_r", self.init_r, 1)
        if not (is_number(self.init_ratio) and self.init_ratio > 1):
            raise LayerLensError(f"baseline.init_ratio must be a number > 1, got {self.init_ratio!r}")
        require_int("baseline.target_r", self.target_r, 1)
        require_fraction("baseline.tinit", self.tinit, low_open=False)
        require_fraction("baseline.tfinal", self.tfinal, low_open=False)
        if not self.tinit + self.tfinal < 1:
            raise LayerLensError(
                f"baseline.tinit + baseline.tfinal must be < 1 to leave steps for budgeting, "
                f"got {self.tinit} + {self.tfinal}"
            )
        require_int("baseline.deltaT", self.deltaT, 1)
        require_fraction("baseline.beta1", self.beta1, low_open=True)
        require_fraction("baseline.beta2", self.beta2, low_open=True)
        require_nonnegative("baseline.orth_reg_weight", self.orth_reg_weight)
        require_positive("baseline.lora_alpha", self.lora_alpha)
        require_fraction("baseline.lora_dropout", self.lora_dropout, low_open=False)
        check_kinds("baseline.target_kinds", self.target_kinds, LINEAR_KINDS)

    def peft_config(
        self, targets: list[str], total_steps: int, init_r: int, target_r: int, task_type: TaskType = TaskType.SEQ_CLS
    ) -> AdaLoraConfig:
        return AdaLoraConfig(
            task_type=task_type,  # SEQ_CLS keeps the task head ("classifier") trainable
            init_r=init_r,
            target_r=target_r,
            tinit=int(self.tinit * total_steps),  # floors: tinit + tfinal < 1 leaves >= 1 budgeting step
            tfinal=int(self.tfinal * total_steps),
            deltaT=self.deltaT,
            beta1=self.beta1,
            beta2=self.beta2,
            orth_reg_weight=self.orth_reg_weight,
            total_step=total_steps,
            lora_alpha=self.lora_alpha,  # type: ignore[arg-type]  # peft says int; a float scales alike
            lora_dropout=self.lora_dropout,
            target_modules=targets,
        )

    def wrap(self, model: nn.Module, config: AdaLoraConfig) -> PeftModel:
        try:
            return get_peft_model(model, config)
        except ValueError as err:  # peft's message for a target module the model does not have
            raise LayerLensError(f"baseline.target_kinds: {str(err).splitlines()[0]}") from None

    def adapt(self, model: nn.Module, ctx: AdaptContext) -> Adapted:
        if ctx.total_steps < 1:
            raise LayerLensError(f"trainer: AdaLoRA needs at least one planned optimiser step, got {ctx.total_steps}")
        limit = ctx.budget.params_limit(ctx.backbone_params)
        targets = layer_targets(model, self.target_kinds, "baseline.target_kinds")
        costs = predicted_rank_costs(model, self.peft_config(targets, ctx.total_steps, 1, 1))
        if not costs:
            raise LayerLensError(f"baseline.target_kinds: {self.target_kinds!r} names no linear layer of the model")
        modules, cost_per_rank = len(costs), sum(costs.values())  # cost_per_rank: one rank in every module
        if limit is None:
            avg_rank, target_rank = float(self.target_r), self.target_r * modules
        else:
            if limit < min(costs.values()):
                needed, limit_field = min(costs.values()), ctx.budget.params_field(ctx.backbone_params)
                if limit_field == "budget.params_pct":
                    raise LayerLensError(
                        params_pct_too_small(
                            ctx.budget, needed, ctx.backbone_params, "to hold one AdaLoRA rank", "target module's rank"
                        )
                    )
                raise LayerLensError(
                    f"budget.params must be >= {needed} to hold one AdaLoRA rank (the cheapest "
                    f"target module's), got {limit}"
                )
            avg_rank = limit / cost_per_rank
            target_rank = max(1, math.floor(avg_rank * modules))
        init_r = max(self.init_r, math.ceil(self.init_ratio * avg_rank))
        config = self.peft_config(
            targets, ctx.total_steps, init_r, max(1, target_rank // modules), peft_task_type(model)
        )
        peft_model = self.wrap(model, config)
        tuner = cast(AdaLoraModel, peft_model.base_model)
        if rank_costs(tuner.model) != costs:
            raise RuntimeError(
                f"peft adapted other modules than predicted: {sorted(set(rank_costs(tuner.model)) ^ set(costs))}"
            )
        if limit is not None:
            tuner.rankallocator = ParamBudgetAllocator(
                tuner.model, config, tuner.trainable_adapter_name, costs, target_rank, limit
            )
        else:
            tuner.rankallocator.target_bgt = target_rank
        final_step = cast(int, config.total_step) - config.tfinal  # total_step: set to ctx.total_steps above
        metrics = {
            "adalora/init_r": float(init_r),
            "adalora/modules": float(modules),
            "adalora/target_rank": float(target_rank),
            "adalora/avg_target_rank": avg_rank,
            "adalora/init_params": float(init_r * cost_per_rank),
            "adalora/tinit_steps": float(config.tinit),
            "adalora/tfinal_steps": float(config.tfinal),
            "adalora/final_allocation_step": float(final_step),
        }
        if limit is not None:
            metrics["adalora/params_limit"] = float(limit)
        log.info(
            "AdaLoRA: %d modules, init rank %d, final total rank %d (avg %.2f), params limit %s, "
            "budgeting steps %d..%d of %d",
            modules,
            init_r,
            target_rank,
            avg_rank,
            limit,
            config.tinit,
            final_step,
            config.total_step,
        )
        return Adapted(
            peft_model,
            metrics=metrics,
            callbacks=[AdaLoraSchedule(peft_model, costs)],
            first_checkpoint_step=final_step,
        )
