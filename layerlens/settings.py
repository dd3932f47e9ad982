"""The run config checked and turned into objects before any run is recorded."""

from dataclasses import dataclass
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from layerlens.budget import Budget
from layerlens.data.sft import SftTaskSpec
from layerlens.data.tasks import TaskSpec
from layerlens.errors import LayerLensError
from layerlens.validation import require_fraction, require_int, require_nonnegative


@dataclass
class RunSettings:
    task: TaskSpec | SftTaskSpec
    backbone: Any
    baseline: Any
    budget: Budget
    tracker: Any
    seed: int
    batch_size: int
    eval_batch_size: int
    num_workers: int
    weight_decay: float
    warmup_ratio: float


def instantiate_node(cfg: DictConfig, key: str, **kwargs):
    """Instantiate the `_target_` node at `key`, with its errors as one line naming the node."""
    try:
        return instantiate(OmegaConf.select(cfg, key), _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, LayerLensError):
            raise cause from None
        detail = str(cause or err).strip().splitlines()[0]
        raise LayerLensError(f"{key}: {detail}") from None


def resolve_settings(cfg: DictConfig) -> RunSettings:
    require_int("trainer.max_epochs", cfg.trainer.get("max_epochs"), 1)
    weight_decay, warmup_ratio = cfg.optim.weight_decay, cfg.optim.warmup_ratio
    require_nonnegative("optim.weight_decay", weight_decay)
    require_fraction("optim.warmup_ratio", warmup_ratio)
    task = instantiate_node(cfg, "task")
    backbone = instantiate_node(cfg, "model")
    baseline = instantiate_node(cfg, "baseline")
    check_task = getattr(baseline, "check_task", None)  # checks of the baseline that need the task
    if check_task is not None:
        check_task(task)
    return RunSettings(
        task=task,
        backbone=backbone,
        baseline=baseline,
        budget=instantiate_node(cfg, "budget"),
        tracker=instantiate_node(cfg, "logger"),
        seed=require_int("seed", cfg.seed, 0),
        batch_size=require_int("data.batch_size", cfg.data.batch_size, 1),
        eval_batch_size=require_int("data.eval_batch_size", cfg.data.eval_batch_size, 1),
        num_workers=require_int("data.num_workers", cfg.data.num_workers, 0),
        weight_decay=weight_decay,
        warmup_ratio=warmup_ratio,
    )
