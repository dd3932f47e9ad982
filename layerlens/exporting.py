"""A finished run's best checkpoint exported to a self-describing folder (python -m layerlens.export), which
`layerlens.load` reads; a LoRA-only model also in peft's format, and with merge=true as a plain transformers model.

The folder (format FORMAT_VERSION of layerlens/loading.py):
  layerlens.json       the manifest: format version, baseline, backbone, task (kind, labels, text columns), files
  config.yaml          the run's config: how the model is rebuilt (backbone, baseline, budget)
  plan.json            a planned run's plan
  weights.safetensors  every trained tensor (adapted modules, task head), and every other one a rebuild from the
                       backbone does not give back (all of a randomly initialised backbone's)
  tokenizer/           the backbone's tokenizer
  adapter_config.json, adapter_model.safetensors   peft's format, for a LoRA-only model on a transformers classifier
  backbone/            the base model peft's format applies to, where the backbone has no name to load it by
  merged/              merge=true: the adapters folded into the base weights, a plain transformers model
"""

import copy
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from layerlens import __version__
from layerlens.errors import LayerLensError
from layerlens.lens.baseline import PLAN_FILE
from layerlens.loading import CONFIG, FORMAT_VERSION, MANIFEST, TOKENIZER, WEIGHTS, rebuild
from layerlens.merging import merged
from layerlens.planning.choices import Plan
from layerlens.settings import instantiate_node
from layerlens.training.resume import RUN_RECORD, interrupt_checkpoint

log = logging.getLogger(__name__)

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
BACKBONE, MERGED = "backbone", "merged"


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
    """Whether peft's own format holds the model: one LoRA adapter (no other method) on a transformers classifier."""
    from peft import PeftModel, PeftType

    if not isinstance(model, PeftModel) or not isinstance(model.get_base_model(), PreTrainedModel):
        return False
    if plan is not None and set(plan.method_counts()) != {"lora"}:
        return False
    return [c.peft_type for c in model.peft_config.values()] == [PeftType.LORA]


def write_peft(model: nn.Module, out: Path, location: str | None) -> list[str]:
    """peft's adapter files in `out`; the base model too (backbone/) where the backbone has no location."""
    from peft import PeftModel

    peft_model = cast(PeftModel, model)
    files = list(PEFT_FILES)
    if location is None:
        base = cast(PreTrainedModel, copy.deepcopy(peft_model).unload())
        base.save_pretrained(str(out / BACKBONE))
        location, files = BACKBONE, [*files, BACKBONE]
    peft_model.peft_config["default"].base_model_name_or_path = location
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return files


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
        merged_model.save_pretrained(str(out / MERGED))
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
