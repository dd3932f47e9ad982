"""Computing a frozen bottom stack once: the encoder layers below the lowest adapted one hold no trainable
parameter, so their output for an example never changes. It is computed on the example's first pass and
reused on every later one (each epoch, each validation), and backpropagation stops above it.

The bottom stack (embeddings and those layers) runs in eval mode, without dropout, every time: that is what
makes its output a function of the example alone. The embeddings, too, run only when the bottom is computed;
on every pass a zero tensor stands in for their output, which the model reads only for its shape, dtype and
device. Rows are keyed by their unpadded token ids (and token type ids), so any batching, shuffling or padding
finds them: the real tokens (by the attention mask) on either side of the padding. A decoder's layers get the
rotary position embeddings and the causal mask the base model computes for the batch, passed to every bottom layer
alike (positions counted from the attention mask: layerlens/models/decoders.py), so a row's states do not depend
on its padding.
"""

from contextlib import contextmanager
from typing import cast

import torch
from torch import nn

from layerlens.lens.sites import base_model, encoder_layers
from layerlens.models.families import FAMILIES, model_family

MB = 2**20


def cacheable(model: nn.Module) -> bool:
    """Whether the model's family runs its layers one after another on the hidden states and what the base model
    passes every layer alike (the family table's cache_refused is None)."""
    return model_family(model).cache_refused is None


@contextmanager
def eval_mode(modules: list[nn.Module]):
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class FrozenBottomCache:
    """Serves the output of encoder layers 0 .. depth-1 from a per-example cache (see the module's docstring).

    Attach it to a model whose embeddings and bottom `depth` layers are frozen. It replaces their forward
    methods: the embeddings return a placeholder, layer 0 the whole bottom stack's output, the others pass it
    on. Past `max_mb` of cached states, new examples are computed each time they come (still without dropout).
    """

    def __init__(self, model: nn.Module, depth: int, max_mb: float = 2048):
        family = model_family(model)
        if family.cache_refused is not None:
            supported = ", ".join(f.name for f in FAMILIES.values() if f.cache_refused is None)
            raise ValueError(
                f"the frozen-bottom cache supports {supported} models, not {family.name}: {family.cache_refused}"
            )
        name, layers = encoder_layers(model)
        if not 1 <= depth <= len(layers):
            raise ValueError(f"depth must be in [1, {len(layers)}] (the encoder's layers), got {depth}")
        # Qwen2 and others may mix full and sliding-window attention, each its own mask: the bottom is run with the
        # first layer's arguments.
        types = getattr(getattr(model, "config", None), "layer_types", None) or []
        if len(set(types[:depth])) > 1:
            raise ValueError(f"the bottom {depth} layers mix attention types ({', '.join(sorted(set(types[:depth])))})")
        base, self.base = base_model(model)
        embeddings = f"{base}.{family.embeddings}" if base else family.embeddings
        trainable = [n for n, p in model.named_parameters() if p.requires_grad and _below(n, embeddings, name, depth)]
        if trainable:
            raise ValueError(f"the bottom {depth} layers must be frozen to be cached, but {trainable[0]} is trainable")
        self.embeddings = model.get_submodule(embeddings)
        self.bottom = list(layers[:depth])
        self.embed = self.embeddings.forward
        self.forwards = [layer.forward for layer in self.bottom]
        self.max_bytes = max_mb * MB
        self.rows: dict[bytes, torch.Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self._inputs: dict | None = None
        self.base.register_forward_pre_hook(self._capture, with_kwargs=True)
        self.embeddings.forward = self._placeholder
        self.bottom[0].forward = self._bottom_output
        for layer in self.bottom[1:]:
            layer.forward = _pass_on

    def _capture(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._inputs = {
            "input_ids": ids,
            "token_type_ids": kwargs.get("token_type_ids"),
            "attention_mask": kwargs.get("attention_mask"),
        }

    def _placeholder(self, input_ids=None, *args, inputs_embeds=None, **kwargs):
        """Zeros shaped (and typed) as the embeddings' output: the bottom's output replaces them in layer 0."""
        rows = input_ids if input_ids is not None else inputs_embeds[..., 0]
        weight = next(self.embeddings.parameters())
        return weight.new_zeros(*rows.shape, self.base.config.hidden_size)

    def _keys(self) -> tuple[list[bytes], torch.Tensor]:
        """Each row's key, and where its real tokens are (the attention mask, as booleans)."""
        inputs = cast(dict, self._inputs)  # set: _bottom_output, the caller, checks it
        ids, types, mask = (inputs[k] for k in ("input_ids", "token_type_ids", "attention_mask"))
        real = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
        keys = []
        for i in range(ids.shape[0]):
            key = ids[i, real[i]].cpu().numpy().tobytes()
            if types is not None:
                key += b"|" + types[i, real[i]].cpu().numpy().tobytes()
            keys.append(key)
        return keys, real

    def _bottom_output(self, hidden_states, *args, **kwargs):
        if self._inputs is None or self._inputs["input_ids"] is None:
            raise RuntimeError("FrozenBottomCache needs the model called with input_ids")
        keys, real = self._keys()
        if all(key in self.rows for key in keys):
            self.hits += len(keys)
            out = hidden_states.new_zeros(hidden_states.shape)
            for i, key in enumerate(keys):
                out[i, real[i]] = self.rows[key]
            return out
        self.misses += len(keys)
        out = self._compute(*args, **kwargs)
        for i, key in enumerate(keys):
            if key not in self.rows and self.bytes < self.max_bytes:
                self.rows[key] = out[i, real[i]].clone()
                self.bytes += self.rows[key].numel() * self.rows[key].element_size()
        return out

    @torch.no_grad()
    def _compute(self, *args, **kwargs):
        inputs = cast(dict, self._inputs)
        # BERT's embeddings take token type ids; a decoder's are an nn.Embedding, called with the ids alone.
        types = {"token_type_ids": inputs["token_type_ids"]} if inputs["token_type_ids"] is not None else {}
        with eval_mode([self.embeddings, *self.bottom]):
            hidden = self.embed(inputs["input_ids"], **types)
            for forward in self.forwards:
                hidden = forward(hidden, *args, **kwargs)
        return hidden


def _pass_on(hidden_states, *args, **kwargs):
    return hidden_states


def _below(parameter: str, embeddings: str, layers: str, depth: int) -> bool:
    """Whether a parameter lies in the embeddings or in one of the first `depth` encoder layers."""
    if parameter.startswith(embeddings + "."):
        return True
    prefix = layers + "."
    if not parameter.startswith(prefix):
        return False
    return int(parameter[len(prefix) :].split(".")[0]) < depth
