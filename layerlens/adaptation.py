"""What every baseline gets to adapt a model, and what it hands back to the pipeline."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from layerlens.budget import Budget


@dataclass
class AdaptContext:
    backbone_params: int  # the unadapted classifier's parameter count
    budget: Budget
    total_steps: int  # optimiser steps the trainer will run
    epochs: int  # passes over the training data (the last perhaps partial)
    train_batches: Callable[[], Iterable[dict]]  # a fresh pass over shuffled training batches
    output_dir: Path  # where the run writes its files
    reuse_plan: bool = False  # rebuild from the plan in output_dir (a finished run; DDP's other ranks: rank 0's)
    plan_wait_s: float = 0.0  # how long to wait for that plan to appear (another process is making it)
    device: str = "cpu"  # where training will run (pipeline.training_device): the measured time model times there


@dataclass
class Adapted:
    """The model to train, plus what the adaptation measured (metrics, files) and needs during training (callbacks)."""

    model: nn.Module
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    callbacks: list = field(default_factory=list)
    # The best checkpoint is chosen among those saved from this optimiser step on: the model the
    # adaptation promised (e.g. AdaLoRA within its budget only after its final rank allocation).
    first_checkpoint_step: int = 0
