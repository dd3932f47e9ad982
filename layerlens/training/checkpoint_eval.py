"""Evaluating a finished run's best checkpoint on any GLUE-format TSV file."""

import hashlib
import re
import tempfile
from pathlib import Path
from typing import cast

import datasets
import lightning as L
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from layerlens.data import TEST, TRAIN, GlueDataModule, read_glue_tsv
from layerlens.data.sft import SftTaskSpec
from layerlens.errors import LayerLensError
from layerlens.models.families import LINEAR_KINDS
from layerlens.pipeline import build_classifier
from layerlens.settings import resolve_settings
from layerlens.tracking.mlflow_tracker import CONFIG_ARTIFACT
from layerlens.training.classifier import SequenceClassifier

# Run configs logged before the model-family table named peft's modules (baseline.target_modules) where they now
# name site kinds (baseline.target_kinds, layerlens/models/families.py): the values conf/baseline/ (lora,
# lora_attention, adalora) and the README (lora on DeBERTa) gave then, each as the site kinds it adapted.
LEGACY_TARGETS = {
    ("query", "value"): ["query", "value"],
    ("query_proj", "value_proj"): ["query", "value"],
    ("query", "key", "value", "attention.output.dense"): ["query", "key", "value", "attn_out"],
    (
        (
            r".*\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense"
            r"|output\.dense)"
        ),
    ): list(LINEAR_KINDS),
}


def upgrade_config(config: DictConfig) -> DictConfig:
    """`config` with an older run's baseline.target_modules replaced by the site kinds it named."""
    targets = OmegaConf.select(config, "baseline.target_modules")
    if targets is None:
        return config
    key = (targets,) if isinstance(targets, str) else tuple(targets)
    if key not in LEGACY_TARGETS:
        raise LayerLensError(
            f"run config: baseline.target_modules {targets!r} (from before baseline.target_kinds) "
            "names no known set of site kinds"
        )
    with open_dict(config):
        del config.baseline["target_modules"]
        config.baseline.target_kinds = LEGACY_TARGETS[key]
    return config


def file_key(path: Path) -> str:
    """A metric-name-safe label for a file, from its folder and name: .../MRPC/dev.tsv -> MRPC_dev."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{path.parent.name}_{path.stem}")


def finished_run(client: MlflowClient, tracking_uri: str, run_id: str) -> tuple[Path, DictConfig]:
    """A finished run's best checkpoint (its `checkpoint` tag) and its logged config, upgraded."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise LayerLensError(f"run_id: no run {run_id!r} in {tracking_uri}") from None
    checkpoint = run.data.tags.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise LayerLensError(f"run {run_id}: its checkpoint {checkpoint!r} is missing (only finished runs have one)")
    with tempfile.TemporaryDirectory() as tmp:
        loaded = OmegaConf.load(client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp))
        return Path(checkpoint), upgrade_config(cast(DictConfig, loaded))  # a run's config: a mapping


def evaluate_run(tracking_uri: str, run_id: str, file: str | Path, batch_size: int = 64) -> dict[str, float]:
    """The task's metrics (e.g. acc, F1, MCC) of the run's best checkpoint on `file`, logged to that run as
    eval/<file key>/*."""
    client = MlflowClient(tracking_uri)
    checkpoint, config = finished_run(client, tracking_uri, run_id)
    s = resolve_settings(config)
    if isinstance(s.task, SftTaskSpec):
        raise LayerLensError(
            f"run {run_id}: evaluate reads GLUE-format TSV files; an instruction-tuning run (task kind sft) is scored "
            "on its test split by the run itself (test/exact_match, test/loss, test/perplexity)"
        )
    path = Path(file).resolve()
    rows = read_glue_tsv(path, s.task)
    tokenizer = s.backbone.tokenizer()
    # As TRAIN the file only sizes the adaptation's context: the run's plan is read back, not profiled again.
    data = GlueDataModule(
        datasets.DatasetDict({TRAIN: rows, TEST: rows}),
        tokenizer,
        s.task.max_length,
        batch_size=batch_size,
        eval_batch_size=batch_size,
    )
    adapted, _ = build_classifier(s, config, data, output_dir=Path(checkpoint).parent.parent, reuse_plan=True)
    module = SequenceClassifier(adapted.model, s.task.num_labels, s.baseline.lr, s.weight_decay, s.warmup_ratio)
    # Not the run's own trainer config: its batch limits (e.g. trainer=debug) must not cut the file short.
    trainer = L.Trainer(
        accelerator=config.trainer.accelerator,
        devices=1,
        precision=config.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    scores = trainer.test(module, dataloaders=data.test_dataloader(), ckpt_path=checkpoint, verbose=False)[0]
    key = file_key(path)
    metrics = {
        f"eval/{key}/{name.removeprefix('test/')}": float(v)
        for name, v in scores.items()
        if name in s.task.metric_names_on("test")
    }
    metrics[f"eval/{key}/n_rows"] = float(len(rows))
    for name, value in metrics.items():
        client.log_metric(run_id, name, value)
    client.set_tag(run_id, f"eval/{key}/file", str(path))
    client.set_tag(run_id, f"eval/{key}/sha256", hashlib.sha256(path.read_bytes()).hexdigest())
    return metrics
