"""Prefix-tuning's torch side on one self-attention layer: learned keys/values prepended to the layer's own."""

import sys
import types
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from layerlens.errors import LayerLensError
from layerlens.methods.linears import linear_shape

ATTR = "layerlens_prefix"


class Prefix(nn.Module):
    def __init__(self, length: int, hidden: int):
        super().__init__()
        # N(0, 0.02) (BERT's initializer_range): near-zero keys give the prefix only a small, even
        # share of attention and near-zero values add almost nothing, so a pretrained layer is
        # barely perturbed at init (peft's N(0, 1) default is far harsher).
        self.keys = nn.Parameter(torch.randn(length, hidden) * 0.02)
        self.values = nn.Parameter(torch.randn(length, hidden) * 0.02)


def _extend_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Prepend `length` always-visible key positions to an sdpa (bool) or eager (additive) mask."""
    if mask is None:
        return None
    visible = mask.new_full((*mask.shape[:-1], length), True if mask.dtype == torch.bool else 0)
    return torch.cat([visible, mask], dim=-1)


def _prefixed_forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
    """BertSelfAttention.forward with the prefix prepended to keys and values."""
    if past_key_values is not None:
        raise NotImplementedError("prefix-tuned attention does not support a KV cache")
    batch, seq = hidden_states.shape[:2]
    heads, size = self.num_attention_heads, self.attention_head_size

    def split(x):  # (..., n, hidden) -> (..., heads, n, size)
        return x.unflatten(-1, (heads, size)).transpose(-3, -2)

    prefix = getattr(self, ATTR)
    query = split(self.query(hidden_states))
    key = torch.cat([split(prefix.keys).expand(batch, -1, -1, -1), split(self.key(hidden_states))], dim=2)
    value = torch.cat([split(prefix.values).expand(batch, -1, -1, -1), split(self.value(hidden_states))], dim=2)
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=_extend_mask(attention_mask, prefix.keys.shape[0]),
        dropout_p=self.dropout.p if self.training else 0.0,
        scale=self.scaling,
    )
    return out.transpose(1, 2).reshape(batch, seq, -1), None


def _decoder_prefixed_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **_):
    """LlamaAttention.forward (Mistral's, Qwen2's) with the prefix's keys and values before the layer's own, as
    peft's prefix tuning puts them in the KV cache: not rotated (rotary positions turn the tokens' keys alone), seen
    by every query; as wide as k_proj's output (num_key_value_heads * head_dim), each shared by its query heads.
    The rows keep the positions they have without a prefix (peft's would start after it)."""
    if cache is not None:
        raise NotImplementedError("prefix-tuned attention does not support a KV cache")
    batch, seq = hidden_states.shape[:2]

    def split(x):  # (..., n, width) -> (..., heads, n, head_dim)
        return x.unflatten(-1, (-1, self.head_dim)).transpose(-3, -2)

    rotate = sys.modules[type(self).__module__].apply_rotary_pos_emb  # the model's own
    query, key = rotate(split(self.q_proj(hidden_states)), split(self.k_proj(hidden_states)), *position_embeddings)
    prefix = getattr(self, ATTR)
    key = torch.cat([split(prefix.keys).expand(batch, -1, -1, -1), key], dim=2)
    value = torch.cat([split(prefix.values).expand(batch, -1, -1, -1), split(self.v_proj(hidden_states))], dim=2)
    groups = self.num_key_value_groups
    if attention_mask is None:  # no padding: transformers leaves the causal mask to the attention kernel
        attention_mask = torch.ones(seq, seq, dtype=torch.bool, device=hidden_states.device).tril()
    out = F.scaled_dot_product_attention(
        query,
        key.repeat_interleave(groups, dim=1),
        value.repeat_interleave(groups, dim=1),
        attn_mask=_extend_mask(attention_mask, prefix.keys.shape[0]),
        dropout_p=self.attention_dropout if self.training else 0.0,
        scale=self.scaling,
    )
    return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1)), None


BERT_STYLE = ("query", "key", "value", "scaling", "all_head_size")
DECODER = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "num_key_value_groups")


def prefixed(model: nn.Module) -> bool:
    """Whether any self-attention of `model` has a prefix attached (it then keeps no KV cache)."""
    return any(hasattr(module, ATTR) for module in model.modules())


def attach_prefix(self_attention: nn.Module, length: int) -> nn.Module:
    """Prefix-tune a transformers BertSelfAttention (or RobertaSelfAttention, its copy), or a decoder's
    LlamaAttention (MistralAttention, Qwen2Attention), in place; returns the prefix.

    Its projections are called, not read, so peft-LoRA-wrapped projections still apply.
    Attention weights are not returned (None), as with transformers' sdpa attention.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise LayerLensError(f"length must be a positive integer, got {length!r}")
    if hasattr(self_attention, ATTR):
        raise LayerLensError(f"{type(self_attention).__name__} already has a prefix")
    forward: Callable
    if all(hasattr(self_attention, name) for name in DECODER):
        key = cast(nn.Module, self_attention.k_proj)
        width, forward = cast(tuple, linear_shape(key))[1], _decoder_prefixed_forward
    elif all(hasattr(self_attention, name) for name in BERT_STYLE):
        width, forward = cast(int, self_attention.all_head_size), _prefixed_forward
    else:
        raise LayerLensError(
            f"{type(self_attention).__name__} is not a BERT-style self-attention "
            "(query, key, value and scaling) nor a Llama-style one: a prefix cannot be attached"
        )
    ref = next(self_attention.parameters())
    prefix = Prefix(length, width).to(device=ref.device, dtype=ref.dtype)
    self_attention.add_module(ATTR, prefix)
    self_attention.forward = types.MethodType(forward, self_attention)
    return prefix
