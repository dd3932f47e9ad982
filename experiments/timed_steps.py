"""What the timing experiments share: a run's model built as `layerlens.run` builds it, and its mean training step."""

import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from layerlens.pipeline import build_classifier, build_datamodule
from layerlens.provenance import git_commit
from layerlens.settings import resolve_settings
from layerlens.training.fine_tuning import decay_groups

CONF = Path(__file__).resolve().parents[1] / "conf"


def build(overrides: list[str], out: Path, seed: int = 0, reuse_plan: bool = False):
    """The adapted model, its data module, the settings and the composed config of a run with these overrides;
    with `reuse_plan`, LayerLens applies the plan already in `out` rather than profiling and planning."""
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("run", [*overrides, "logger=none", f"seed={seed}"])
    s = resolve_settings(cfg)
    torch.manual_seed(seed)
    data = build_datamodule(s, s.backbone.tokenizer())
    adapted, _ = build_classifier(s, cfg, data, out, reuse_plan=reuse_plan)
    return adapted, data, s, cfg


def seconds_per_step(model, batches, lr: float, bf16: bool = False) -> float:
    """Mean seconds of a training step (forward, backward, AdamW step) over `batches`, a list or a data loader."""
    model.train()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.01), lr=lr)
    steps, start = 0, time.perf_counter()
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
    return (time.perf_counter() - start) / steps


def provenance() -> str:
    """The lines that open a timing README: this process's command, commit and time, and the machine it ran on."""
    return (
        f"Command: `{shlex.join(['python', *sys.argv])}` at commit {git_commit()}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.\n"
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}.\n\n"
    )
