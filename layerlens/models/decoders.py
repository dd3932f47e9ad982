"""What a decoder (a family with causal=True in layerlens/models/families.py) needs to classify sequences.

transformers' sequence classifiers of decoders (LlamaForSequenceClassification and its kin through
GenericForSequenceClassification, GPT2ForSequenceClassification) read the score at each row's rightmost token
that is not `config.pad_token_id`, so they find the last real token on either side of the padding, given that id;
without it they refuse batches of more than one row. Their positions run 0, 1, ... over the padded row unless
position ids are given, so a left-padded row would see other positions than the same row right-padded: here they
are counted from the attention mask, and a row's score is the same whatever its padding.
"""

from typing import Any

import torch
from peft import TaskType
from torch import nn
from transformers import GenerationMixin

from layerlens.errors import LayerLensError
from layerlens.lens.sites import base_model
from layerlens.models.families import model_family


def generates(model: nn.Module) -> bool:
    """Whether `model` is a language model that generates text (a decoder's *ForCausalLM): its head is the
    pretrained LM head, not a new task head, and peft wraps it as a causal LM."""
    return isinstance(model, GenerationMixin)


def peft_task_type(model: nn.Module) -> TaskType:
    """peft's task type for `model` (before wrapping): a causal LM, else a sequence classifier (whose task head
    peft keeps trainable)."""
    return TaskType.CAUSAL_LM if generates(model) else TaskType.SEQ_CLS


def padded(tokenizer):
    """`tokenizer` with a padding token: its own, else its end-of-sequence token (GPT-2's and Llama's have none)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LayerLensError(
                f"model: the tokenizer ({type(tokenizer).__name__}) has neither a padding nor an end-of-sequence "
                "token to pad with"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_decoder(model: nn.Module, pad_token_id: int) -> nn.Module:
    """A decoder's sequence classifier set to score the last real token of rows padded with `pad_token_id` (the
    tokenizer's), on either side, at positions counted from the attention mask, without a KV cache (a causal LM
    likewise: it generates without one). An encoder is returned as it is."""
    if not model_family(model).causal:
        return model
    config: Any = model.config  # a transformers config
    config.pad_token_id = pad_token_id  # where the classifier finds the last real token
    config.use_cache = False  # a classifier never decodes: no key-value cache built while training
    base_model(model)[1].register_forward_pre_hook(positions_from_mask, with_kwargs=True)
    return model


def positions_from_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Before the base model runs: position ids counted over the real tokens (0 at each row's first), unless given."""
    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is None and isinstance(mask, torch.Tensor) and mask.dim() == 2:
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return args, kwargs
