"""One experiment: config -> data + backbone -> adapted model -> training -> best-checkpoint metrics."""

import logging
import math
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from torch import nn

from layerlens.adaptation import AdaptContext, Adapted
from layerlens.baselines import LayerLensBaseline
from layerlens.data import GlueDataModule, load_task_splits, protocol_splits
from layerlens.data.kinds import on_test
from layerlens.data.sft import SftTaskSpec, load_sft_splits
from layerlens.data.sft_batches import SftDataModule, end_token_id
from layerlens.errors import LayerLensError
from layerlens.planning.choices import Plan
from layerlens.provenance import git_commit, native_build
from layerlens.settings import RunSettings, instantiate_node, resolve_settings
from layerlens.tracking import NullTracker
from layerlens.training.callbacks import CheckpointFromStep, EpochLog, FitTimer, Interruption, progress_bar_shown
from layerlens.training.causal_lm import CausalLanguageModel
from layerlens.training.classifier import SequenceClassifier
from layerlens.training.resources import peak_rss_mb, reset_peak_rss
from layerlens.training.resume import (
    check_resumable,
    record_finished,
    resume_warning_silenced,
    shuffled_train_loader,
    sweep_job,
    write_run_record,
)

log = logging.getLogger(__name__)
RANK_ZERO_PLAN_WAIT_S = 3600.0  # how long a DDP rank > 0 waits for rank 0 to profile and plan (SLURM starts all)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def run_name(s: RunSettings) -> str:
    return f"{s.baseline.name}-{s.task.name}-s{s.seed}"


def run_tags(s: RunSettings, sweep: str | None) -> dict[str, str]:
    tags = {
        "baseline": s.baseline.name,
        "task": s.task.name,
        "model": s.backbone.name,
        "seed": str(s.seed),
        "mlflow.source.git.commit": git_commit(),
        "native_build": native_build(),
    }
    if sweep:
        tags["sweep"] = sweep
    return tags


def planned_steps(trainer_cfg: DictConfig, train_batches: int) -> tuple[int, int]:
    """The optimiser steps `Trainer.fit` will run and the epochs they span, from the trainer config and the
    batches per epoch."""
    limit = trainer_cfg.get("limit_train_batches")
    if isinstance(limit, int):
        train_batches = min(train_batches, limit)
    elif isinstance(limit, float):
        train_batches = int(train_batches * limit)
    total = train_batches * trainer_cfg.max_epochs
    max_steps = trainer_cfg.get("max_steps") or -1
    steps = min(total, max_steps) if max_steps > 0 else total
    return steps, max(1, math.ceil(steps / max(train_batches, 1)))


def adapt_context(
    s: RunSettings,
    cfg: DictConfig,
    data: GlueDataModule | SftDataModule,
    backbone_params: int,
    output_dir: Path,
    reuse_plan: bool = False,
    plan_wait_s: float = 0.0,
) -> AdaptContext:
    total_steps, epochs = planned_steps(cfg.trainer, len(data.train_dataloader()))
    return AdaptContext(
        backbone_params=backbone_params,
        budget=s.budget,
        total_steps=total_steps,
        epochs=epochs,
        train_batches=data.train_dataloader,
        output_dir=Path(output_dir),
        reuse_plan=reuse_plan,
        plan_wait_s=plan_wait_s,
        device=training_device(cfg.trainer),
    )


def training_device(trainer: DictConfig) -> str:
    """The device the trainer will train on, as far as the measured time model needs it: CUDA where the
    accelerator allows it (auto, gpu, cuda) and one is present, else the CPU."""
    accelerator = str(trainer.get("accelerator", "auto"))
    return "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"


def build_classifier(
    s: RunSettings,
    cfg: DictConfig,
    data: GlueDataModule | SftDataModule,
    output_dir: Path,
    reuse_plan: bool = False,
    plan_wait_s: float = 0.0,
) -> tuple[Adapted, int]:
    """The backbone with its task head and the baseline's adaptation applied, and its size before adaptation."""
    model = task_model(s)
    backbone_params = count_parameters(model)
    return s.baseline.adapt(
        model, adapt_context(s, cfg, data, backbone_params, output_dir, reuse_plan, plan_wait_s)
    ), backbone_params


def plan_experiment(cfg: DictConfig, output_dir: Path) -> tuple[Plan, dict[str, float]]:
    """Profile and plan as `baseline=layerlens` would, without training; the plan's files go to output_dir."""
    s = resolve_settings(cfg)
    if not isinstance(s.baseline, LayerLensBaseline):
        raise LayerLensError(f"baseline: planning needs baseline=layerlens, got {s.baseline.name!r}")
    L.seed_everything(s.seed, workers=True)
    data = build_datamodule(s, s.backbone.tokenizer())
    model = task_model(s)
    ctx = adapt_context(s, cfg, data, count_parameters(model), output_dir)
    sites, profile, plan, plan_s, calibrate_s = s.baseline.plan(model, ctx)
    s.baseline.save(plan, sites, ctx.output_dir, model)
    return plan, {**s.baseline.record(profile, plan), "time/plan_s": plan_s, "time/calibrate_s": calibrate_s}


def task_model(s: RunSettings) -> nn.Module:
    """The backbone with what the task reads from it: a sequence classifier (its task head new), or for
    instruction tuning the causal LM with its pretrained head."""
    return s.backbone.causal_lm() if isinstance(s.task, SftTaskSpec) else s.backbone.classifier(s.task.num_labels)


def build_datamodule(s: RunSettings, tokenizer) -> GlueDataModule | SftDataModule:
    if isinstance(s.task, SftTaskSpec):
        splits = protocol_splits(s.task, load_sft_splits(s.task))
        return SftDataModule(splits, tokenizer, s.task, s.batch_size, s.eval_batch_size, s.num_workers)
    return GlueDataModule(
        protocol_splits(s.task, load_task_splits(s.task)),
        tokenizer,
        max_length=s.task.max_length,
        batch_size=s.batch_size,
        eval_batch_size=s.eval_batch_size,
        num_workers=s.num_workers,
    )


def training_module(s: RunSettings, model: nn.Module, tokenizer) -> L.LightningModule:
    """The LightningModule that trains and scores `model` for the task: a classifier's, or a causal LM's."""
    if isinstance(s.task, SftTaskSpec):
        return CausalLanguageModel(
            model,
            decode=partial(tokenizer.decode, skip_special_tokens=True),
            pad_token_id=tokenizer.pad_token_id,
            end_token_id=end_token_id(tokenizer),
            max_new_tokens=s.task.max_new_tokens,
            lr=s.baseline.lr,
            weight_decay=s.weight_decay,
            warmup_ratio=s.warmup_ratio,
        )
    return SequenceClassifier(model, s.task.num_labels, s.baseline.lr, s.weight_decay, s.warmup_ratio)


def run_experiment(
    cfg: DictConfig, output_dir: Path, sweep: str | None = None, sweep_stop_file: Path | None = None
) -> float:
    """Train one configuration, choose its checkpoint on the selection split and read the test split once with it;
    returns the task's headline metric on the selection split (what a search may maximise), or on the test split
    when the task has no selection split (task.selection_split=none: the last epoch's checkpoint).

    With `resume=<output folder>`, continue that interrupted run (same MLflow run, same folder) from its checkpoint.
    With `resume_sweep=<sweep folder>` (a sweep, -m), the run's folder in that sweep says: a run that finished there is
    not run again (its headline metric is returned), one interrupted in training is resumed, any other runs afresh.
    In a sweep, `sweep_stop_file` may ask the run to stop as a signal would (Interruption).
    """
    s = resolve_settings(cfg)
    resuming, resume_id = cfg.get("resume") is not None, None
    if resuming:
        if sweep:
            raise LayerLensError("resume: resumes one run; it cannot be part of a sweep (-m)")
        output_dir = Path(str(cfg.resume)).expanduser().resolve()
    elif cfg.get("resume_sweep") is not None:
        earlier = sweep_job(cfg, output_dir, sweep)
        if not isinstance(earlier, bool):
            log.info("run %s finished in sweep %s before: not run again", run_name(s), sweep)
            return earlier
        resuming = earlier
    if resuming:
        resume_id = check_resumable(cfg, output_dir)
    interruption = Interruption(output_dir, sweep_stop_file)
    reset_peak_rss()
    # Under DDP every process runs all of this; only global rank 0 records the run (MLflow, run.json).
    recording = rank_zero_only.rank == 0  # type: ignore[attr-defined]  # Lightning sets it on the function
    tracker = s.tracker if recording else NullTracker()
    with (
        tracker.start_run(run_name(s), run_tags(s, sweep), cfg, run_id=resume_id) as run,
        interruption.handling_signals(),
    ):
        if not resuming and recording:
            write_run_record(output_dir, run.run_id, cfg)
        L.seed_everything(s.seed, workers=True)
        started = time.perf_counter()
        data = build_datamodule(s, s.backbone.tokenizer())
        data_s = time.perf_counter() - started
        # Global rank 0 profiles and plans; the other ranks train the plan it wrote (DDP, FSDP): the same plan on
        # every rank, and profiling once.
        adapted, backbone_params = build_classifier(
            s,
            cfg,
            data,
            output_dir,
            reuse_plan=resuming or not recording,
            plan_wait_s=0.0 if recording else RANK_ZERO_PLAN_WAIT_S,
        )
        if not resuming:  # the first attempt logged them
            run.log_metrics(adapted.metrics)
            for artifact in adapted.artifacts:
                run.log_artifact(artifact)
        model = adapted.model
        trainable = count_parameters(model, trainable_only=True)
        module = training_module(s, model, data.tokenizer)
        timer = FitTimer()
        selects = s.task.selects
        checkpoint = CheckpointFromStep(
            adapted.first_checkpoint_step,
            dirpath=Path(output_dir) / "checkpoints",
            filename="best-{epoch}-{step}" if selects else "last-{epoch}-{step}",
            monitor=s.task.headline_metric if selects else None,
            mode=s.task.headline_mode,
            save_top_k=1,
        )
        interruption.loader = shuffled_train_loader(data, s.seed)
        progress_bar = progress_bar_shown(bool(cfg.trainer.get("enable_progress_bar", True)))
        trainer = instantiate_node(
            cfg,
            "trainer",
            callbacks=[timer, checkpoint, interruption, *adapted.callbacks, *([] if progress_bar else [EpochLog()])],
            logger=run.lightning_logger(),
            default_root_dir=str(output_dir),
            enable_progress_bar=progress_bar,
        )
        with resume_warning_silenced():
            trainer.fit(
                module,
                train_dataloaders=interruption.loader,
                val_dataloaders=data.val_dataloader() if selects else None,
                ckpt_path=interruption.checkpoint if resuming else None,
            )

        trainer.loggers = []  # the chosen checkpoint's metrics are logged once, below, after the epoch curves
        start = time.perf_counter()
        chosen = checkpoint.best_model_path
        selected = (
            trainer.validate(module, dataloaders=data.val_dataloader(), ckpt_path=chosen, verbose=False)[0]
            if selects
            else {}
        )
        tested = trainer.test(module, dataloaders=data.test_dataloader(), ckpt_path=chosen, verbose=False)[0]
        eval_s = time.perf_counter() - start
        metrics = {
            **{k: float(v) for k, v in selected.items() if k.startswith("val/")},
            **{k: float(v) for k, v in tested.items() if k.startswith("test/")},
            "params/backbone": backbone_params,
            "params/trainable": trainable,
            "params/trainable_pct": 100.0 * trainable / backbone_params,
            "time/train_s": timer.train_s,
            # What the adaptation took before training (calibrating, profiling, planning), plus training: evaluation
            # and loading excluded.
            "time/total_s": adapted.metrics.get("time/calibrate_s", 0.0)
            + adapted.metrics.get("time/profile_s", 0.0)
            + adapted.metrics.get("time/plan_s", 0.0)
            + timer.train_s,
            "time/eval_s": eval_s,
            # Where this attempt's wall time went besides: loading and tokenising the data, validating between
            # epochs, and within training time its steps and writing checkpoints (the rest: fetching batches, the loop).
            "time/data_s": data_s,
            "time/validate_s": timer.validate_s,
            "time/steps_s": timer.steps_s,
            "time/checkpoint_s": checkpoint.save_s,
            "time/wall_s": time.perf_counter() - started,
            "mem/peak_rss_mb": peak_rss_mb(),
            "throughput/train_samples_per_s": timer.train_samples / timer.train_s,
        }
        run.log_metrics(metrics, step=trainer.global_step + 1)
        run.set_tags({"checkpoint": checkpoint.best_model_path})
    interruption.checkpoint.unlink(missing_ok=True)  # finished: nothing left to resume
    headline = metrics[s.task.headline_metric if selects else on_test(s.task.headline_metric)]
    if recording:
        record_finished(output_dir, headline)
    chosen_by = f"best on the selection split by {s.task.headline_metric}" if selects else "the last epoch's"
    log.info(
        "run %s (mlflow run %s): %s test split %r, checkpoint %s (%s): %s; trainable %d (%.3f%% of backbone); "
        "train %.1f s",
        run_name(s),
        run.run_id,
        s.task.name,
        s.task.test_split,
        Path(checkpoint.best_model_path).name,
        chosen_by,
        ", ".join(
            f"{name.removeprefix('test/')} {metrics.get(name, float('nan')):.4f}"
            for name in s.task.metric_names_on("test")
        ),
        trainable,
        metrics["params/trainable_pct"],
        timer.train_s,
    )
    return headline
