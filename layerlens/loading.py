"""An exported model (python -m layerlens.export) read back: `load(folder)` returns it ready to predict.

An export folder holds the run's config (config.yaml) and, for planned runs, its plan.json: from them the model is
rebuilt exactly as training built it, without data, and the weights the export kept (weights.safetensors: every
trained tensor, and every other one a rebuild does not give back) are put in place.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from safetensors.torch import load_file
from torch import nn

from layerlens.adaptation import AdaptContext
from layerlens.errors import LayerLensError
from layerlens.settings import instantiate_node

FORMAT_VERSION = 1
MANIFEST, CONFIG, WEIGHTS, TOKENIZER = "layerlens.json", "config.yaml", "weights.safetensors", "tokenizer"
# Every random initialisation of a rebuild draws from this seed, at export and at load alike: a tensor the export
# found equal to a rebuild's (and so did not keep) is that rebuild's again when loaded.
REBUILD_SEED = 0


@dataclass(frozen=True)
class Exported:
    """A loaded export: the model (eval mode), its tokenizer and the manifest (layerlens.json)."""

    model: nn.Module
    tokenizer: Any
    manifest: dict

    @property
    def task(self) -> dict:
        return self.manifest["task"]


def _no_training_data():
    raise LayerLensError("a model rebuilt from an export has no training data: plan.json must be beside config.yaml")


def rebuild(config: DictConfig, plan_dir: Path, num_labels: int) -> nn.Module:
    """The run's model as its baseline builds it (plan.json read from `plan_dir`), its new weights drawn from
    REBUILD_SEED, in eval mode."""
    config = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(config)))
    if config.baseline.get("cache_frozen_layers") is not None:
        with open_dict(config):
            # The cache speeds training up (a loaded model computes every layer); the gains file only adds a check
            # to the plan's record.
            config.baseline.cache_frozen_layers = False
            config.baseline.validity_gains = None
    backbone = instantiate_node(config, "model")
    baseline = instantiate_node(config, "baseline")
    budget = instantiate_node(config, "budget")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REBUILD_SEED)
        model = backbone.classifier(num_labels)
        ctx = AdaptContext(
            backbone_params=sum(p.numel() for p in model.parameters()),
            budget=budget,
            total_steps=1,  # the schedules of training (AdaLoRA's) shape nothing a trained model keeps
            epochs=1,
            train_batches=_no_training_data,
            output_dir=plan_dir,
            reuse_plan=True,
        )
        return baseline.adapt(model, ctx).model.eval()


def read_manifest(folder: str | Path) -> dict:
    """The export's manifest, once the folder is seen to be an export this version reads, with every file it lists."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise LayerLensError(f"{path}: missing (not a folder written by python -m layerlens.export)")
    try:
        manifest = json.loads(path.read_text())
        version = manifest["format_version"]
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise LayerLensError(f"{path}: not a LayerLens export manifest (JSON with format_version and files)") from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LayerLensError(
            f"{path}: format_version {version!r} is newer than this LayerLens reads ({FORMAT_VERSION}): "
            "upgrade LayerLens"
        )
    for name in files:
        if not (folder / name).exists():
            raise LayerLensError(f"{folder / name}: missing (listed in {MANIFEST}; the export is incomplete)")
    return manifest


def load_export(folder: str | Path) -> Exported:
    """The model of an export folder with its tokenizer and manifest."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    manifest = read_manifest(folder)
    config = cast(DictConfig, OmegaConf.load(folder / CONFIG))
    model = rebuild(config, folder, manifest["task"]["num_labels"])
    weights = load_file(str(folder / WEIGHTS))
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise LayerLensError(f"{folder / WEIGHTS}: holds {unexpected[0]}, which the model built from {CONFIG} lacks")
    return Exported(model.eval(), AutoTokenizer.from_pretrained(str(folder / TOKENIZER)), manifest)


def load(folder: str | Path) -> nn.Module:
    """The model of an export folder (python -m layerlens.export), in eval mode: it takes the tokenizer's output
    (the folder's tokenizer/) and returns logits, as the run's best checkpoint did."""
    return load_export(folder).model
