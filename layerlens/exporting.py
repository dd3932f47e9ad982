"""A finished run's best checkpoint exported to a self-describing folder (python -m layerlens.export), which
`layerlens.load` reads; a LoRA-only model also in peft's format, and with merge=true as a plain transformers model.

The folder (format FORMAT_VERSION of layerlens/loading.py):
  layerlens.json       the manifest: format version, baseline, backbone, task (kind, labels, text columns), files
  config.yaml          the run's config: how the model is rebuilt (backbone, baseline, budget)
  plan.json            a planned run's plan
  weights.safetensors  every trained tensor (adapted modules, task head), and every other one a rebuild from the
                       backbone does not give back (all of a randomly initialised backbone's)
  tokenizer/           the backbone's tokenizer
  adapter_config.json, adapter_model.safetensors   peft's format, for a LoRA-only model
  backbone/            the base model peft's format applies to, where the backbone has no name to load it by
  merged/              merge=true: the adapters folded into the base weights, a plain transformers model
  head.safetensors     model.pooling=mean: the task head (classifier.weight, classifier.bias) on the mean of the
                       encoder's token states over the attention mask; peft's format and merged/ then hold the
                       encoder alone (a transformers AutoModel), as LayerLens's own head is not a transformers one
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from layerlens import __version__
from layerlens.data.sft import SFT
from layerlens.errors import LayerLensError
from layerlens.lens.baseline import PLAN_FILE
from layerlens.loading import CONFIG, FORMAT_VERSION, MANIFEST, TOKENIZER, WEIGHTS, rebuild
from layerlens.merging import merged
from layerlens.models.heads import MeanPoolingClassifier
from layerlens.planning.choices import Plan
from layerlens.settings import instantiate_node
from layerlens.training.resume import RUN_RECORD, interrupt_checkpoint

if TYPE_CHECKING:
    from peft import PeftModel

log = logging.getLogger(__name__)

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
BACKBONE, MERGED, HEAD = "backbone", "merged", "head.safetensors"
PEFT_PREFIX = "base_model.model."  # of the keys in peft's adapter_model.safetensors


@dataclass(frozen=True)
class FinishedRun:
    config: DictConfig
    checkpoint: Path
    folder: Path  # the run's output folder (plan.json)
    run_id: str | None


def run_from_folder(folder: str | Path) -> FinishedRun:
    """A finished run from its output folder: its run.json and its one best (or last epoch's) checkpoint."""
    folder = Path(folder).expanduser().resolve()
    record_path = folder / RUN_RECORD
    if not record_path.is_file():
        raise LayerLensError(f"run_dir: {folder} has no {RUN_RECORD}: not the output folder of a layerlens.run run")
    try:
        record = json.loads(record_path.read_text())
        config = cast(DictConfig, OmegaConf.create(record["config"]))
    except (ValueError, KeyError, TypeError):
        raise LayerLensError(
            f"run_dir: {record_path} is not a run record (JSON with mlflow_run_id and config)"
        ) from None
    interrupted = interrupt_checkpoint(folder)
    checkpoints = sorted(p for p in (folder / "checkpoints").glob("*.ckpt") if p != interrupted)
    if len(checkpoints) != 1:
        found = "none" if not checkpoints else ", ".join(p.name for p in checkpoints)
        raise LayerLensError(
            f"run_dir: {folder / 'checkpoints'} must hold one chosen checkpoint (a finished run's), found {found}"
        )
    return FinishedRun(config, checkpoints[0], folder, record.get("mlflow_run_id"))


def run_from_store(tracking_uri: str, run_id: str) -> FinishedRun:
    """A finished run from the MLflow store: its logged config and the checkpoint it is tagged with."""
    from mlflow.tracking import MlflowClient

    from layerlens.training.checkpoint_eval import finished_run

    checkpoint, config = finished_run(MlflowClient(tracking_uri), tracking_uri, run_id)
    return FinishedRun(config, checkpoint, checkpoint.parent.parent, run_id)


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model's tensors in a Lightning checkpoint of SequenceClassifier (its `model.` submodule)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {name.removeprefix("model."): t for name, t in state.items() if name.startswith("model.")}


def kept_weights(trained: nn.Module, reference: nn.Module, everything: bool) -> dict[str, torch.Tensor]:
    """What the export keeps of `trained`: every trainable tensor and every tensor a rebuild (`reference`) does not
    give back; with `everything`, all of them."""
    trainable = {name for name, p in trained.named_parameters() if p.requires_grad}
    rebuilt = reference.state_dict()
    return {
        name: t.detach().clone().contiguous()  # clones: safetensors refuses tensors that share memory
        for name, t in trained.state_dict().items()
        if everything or name in trainable or not torch.equal(t, rebuilt[name])
    }


def task_description(config: DictConfig) -> dict:
    task = instantiate_node(config, "task")
    if task.kind == SFT:
        raise LayerLensError(
            "run: exports hold sequence classifiers; an instruction-tuning run (task kind sft) is not exported yet: "
            "its Lightning checkpoint is in the run's checkpoints/ folder"
        )
    return {
        "name": task.name,
        "kind": task.kind,
        "num_labels": task.num_labels,
        # classification: the class names by class id (the ids themselves where the task names none)
        "labels": None
        if task.kind == "regression"
        else list(task.label_names or [str(i) for i in range(task.num_labels)]),
        "text_columns": list(task.text_columns),
        "column_names": None if task.column_names is None else list(task.column_names),
        "max_length": task.max_length,
    }


def peft_exportable(model: nn.Module, plan: Plan | None) -> bool:
    """Whether peft's own format holds the model: one LoRA adapter (no other method) on a transformers classifier,
    or on a mean-pooling classifier's transformers encoder."""
    from peft import PeftModel, PeftType

    if not isinstance(model, PeftModel):
        return False
    if not isinstance(model.get_base_model(), (PreTrainedModel, MeanPoolingClassifier)):
        return False
    if plan is not None and set(plan.method_counts()) != {"lora"}:
        return False
    return [c.peft_type for c in model.peft_config.values()] == [PeftType.LORA]


def write_peft(model: nn.Module, out: Path, location: str | None) -> list[str]:
    """peft's adapter files in `out`; the base model too (backbone/) where the backbone has no location. On a
    mean-pooling classifier, the adapter applies to its encoder (peft's feature extraction) and the head is in HEAD."""
    from peft import PeftModel

    peft_model = cast(PeftModel, model)
    files = list(PEFT_FILES)
    base = cast(nn.Module, copy.deepcopy(peft_model).unload())
    if isinstance(base, MeanPoolingClassifier):
        save_head(base, out)  # unload() put the head's trained copy in place
        peft_model, base = encoder_adapter(peft_model, base.encoder), base.encoder
        files.append(HEAD)
    if location is None:
        cast(PreTrainedModel, base).save_pretrained(str(out / BACKBONE))
        location, files = BACKBONE, [*files, BACKBONE]
    peft_model.peft_config["default"].base_model_name_or_path = location
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return files


def encoder_adapter(model: PeftModel, encoder: nn.Module) -> PeftModel:
    """The LoRA adapter of a mean-pooling classifier (`model`, a PeftModel) moved onto a copy of its bare `encoder`:
    the same ranks and scales, its module names without the classifier's "encoder." and no head."""
    from peft import LoraConfig, TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    config = cast(LoraConfig, copy.deepcopy(model.peft_config["default"]))
    config.task_type = TaskType.FEATURE_EXTRACTION
    config.modules_to_save = None
    config.target_modules = sorted(name.removeprefix("encoder.") for name in config.target_modules or [])
    escaped = re.escape("encoder.")  # the patterns are module names, escaped (layerlens/methods/lora.py)
    config.rank_pattern = {key.removeprefix(escaped): r for key, r in (config.rank_pattern or {}).items()}
    config.alpha_pattern = {key.removeprefix(escaped): a for key, a in (config.alpha_pattern or {}).items()}
    adapted = get_peft_model(cast(PreTrainedModel, copy.deepcopy(encoder)), config)
    prefix = PEFT_PREFIX + "encoder."
    state = get_peft_model_state_dict(model)
    set_peft_model_state_dict(
        adapted, {PEFT_PREFIX + key.removeprefix(prefix): t for key, t in state.items() if key.startswith(prefix)}
    )
    return adapted


def save_head(model: MeanPoolingClassifier, out: Path) -> None:
    head = {f"classifier.{name}": t.detach().clone().contiguous() for name, t in model.classifier.state_dict().items()}
    save_file(head, str(out / HEAD))


def save_merged(model: nn.Module, out: Path) -> None:
    """A merged model in `out`: a transformers model as it is; a mean-pooling classifier's encoder and HEAD."""
    if isinstance(model, MeanPoolingClassifier):
        cast(PreTrainedModel, model.encoder).save_pretrained(str(out))
        save_head(model, out)
    else:
        cast(PreTrainedModel, model).save_pretrained(str(out))


def export_run(run: FinishedRun, out: str | Path, merge: bool = False) -> Path:
    """Write the export folder of `run` to `out` (see the module docstring); returns its path."""
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise LayerLensError(f"out: {out} exists and is not empty")
    config = run.config
    task = task_description(config)
    backbone = instantiate_node(config, "model")
    location = backbone.location() if hasattr(backbone, "location") else None
    trained = rebuild(config, run.folder, task["num_labels"])
    try:
        trained.load_state_dict(checkpoint_weights(run.checkpoint))
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise LayerLensError(f"{run.checkpoint}: does not fit the model its run's config builds ({detail})") from None
    plan_path = run.folder / PLAN_FILE
    plan = Plan.from_json(plan_path.read_text()) if plan_path.is_file() else None
    merged_model = merged(trained, plan) if merge else None  # refused before anything is written

    out.mkdir(parents=True, exist_ok=True)
    files = [CONFIG, WEIGHTS, TOKENIZER]
    OmegaConf.save(config, out / CONFIG)
    if plan is not None:
        shutil.copyfile(plan_path, out / PLAN_FILE)
        files.append(PLAN_FILE)
    reference = rebuild(config, run.folder, task["num_labels"])
    save_file(kept_weights(trained, reference, everything=location is None), str(out / WEIGHTS))
    tokenizer = backbone.tokenizer()
    tokenizer.save_pretrained(str(out / TOKENIZER))
    if peft_exportable(trained, plan):
        files += write_peft(trained, out, location)
    if merged_model is not None:
        save_merged(merged_model, out / MERGED)
        tokenizer.save_pretrained(str(out / MERGED))
        files.append(MERGED)
    manifest = {
        "format_version": FORMAT_VERSION,
        "layerlens_version": __version__,
        "run_id": run.run_id,
        "checkpoint": str(run.checkpoint),
        "baseline": config.baseline.name,
        "backbone": location,  # a hub name or a folder; null: a random backbone, all of it in weights.safetensors
        "model": OmegaConf.to_container(config.model),
        "task": task,
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("exported %s (%s) to %s: %s", run.checkpoint, config.baseline.name, out, ", ".join(files))
    return out
