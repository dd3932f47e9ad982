"""The prefix against attention written out by hand: softmax(Q·[P_k; K]ᵀ/√d + mask)·[P_v; V], head by head.

The reference below reads only the layer's weights and the prefix's parameters, never the module's own forward
helpers, so a wrong scale, a wrong split of the prefix into heads or a wrong mask shows up as a difference,
under either attention implementation (eager gets an additive float mask, sdpa a boolean one).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from layerlens.methods.layers.prefix import attach_prefix

HIDDEN, HEADS, VOCAB = 32, 2, 100
PREFIX_LENGTHS = (3, 2)  # one per layer


def tiny_encoder(family: str, attn: str):
    torch.manual_seed(0)
    sizes = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=len(PREFIX_LENGTHS),
        num_attention_heads=HEADS,
        intermediate_size=64,
        vocab_size=VOCAB,
        attn_implementation=attn,
    )
    if family == "bert":
        return BertModel(BertConfig(**sizes), add_pooling_layer=False).eval()
    return RobertaModel(
        RobertaConfig(**sizes, pad_token_id=1, max_position_embeddings=40), add_pooling_layer=False
    ).eval()


def with_random_prefixes(model):
    """A prefix on every layer, its keys and values N(0, 1) so that it takes a real share of the attention."""
    torch.manual_seed(1)
    for layer, length in zip(model.encoder.layer, PREFIX_LENGTHS):
        prefix = attach_prefix(layer.attention.self, length)
        with torch.no_grad():
            for p in prefix.parameters():
                p.copy_(torch.randn_like(p))
    return model


def padded_batch():
    """Three rows, two of them padded (attention_mask 0 on their tails)."""
    torch.manual_seed(2)
    ids = torch.randint(3, VOCAB, (3, 7))
    keep = torch.ones_like(ids)
    keep[0, 4:] = 0
    keep[2, 2:] = 0
    return ids, keep


def reference_attention(attention, hidden, keep, prefix_keys, prefix_values, scale=None):
    """Prefixed self-attention in plain torch. hidden: (batch, n, HIDDEN); keep: (batch, n) of 0/1; scale: of the
    scores, 1/√d unless given.

    Head h owns hidden columns h*d .. (h+1)*d-1 of the queries, keys and values (BERT's layout), the prefix's
    included. Every prefix position is visible to every query; padded key positions are not.
    """
    batch, n = keep.shape
    length = prefix_keys.shape[0]
    d = HIDDEN // HEADS
    q = hidden @ attention.query.weight.T + attention.query.bias
    k = torch.cat([prefix_keys.expand(batch, length, HIDDEN), hidden @ attention.key.weight.T + attention.key.bias], 1)
    v = torch.cat(
        [prefix_values.expand(batch, length, HIDDEN), hidden @ attention.value.weight.T + attention.value.bias], 1
    )
    visible = torch.cat([torch.ones(batch, length), keep.float()], dim=1).bool()  # (batch, length + n)
    out = torch.empty(batch, n, HIDDEN)
    for h in range(HEADS):
        cols = slice(h * d, (h + 1) * d)
        scores = q[:, :, cols] @ k[:, :, cols].transpose(1, 2)  # (batch, n, length + n)
        scores = scores / math.sqrt(d) if scale is None else scores * scale
        scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
        out[:, :, cols] = scores.softmax(dim=-1) @ v[:, :, cols]
    return out


def weights(linear):
    return linear.weight, linear.bias


def reference_encoder(model, ids, keep):
    """The whole encoder by hand (embeddings from the model), each layer's attention from reference_attention."""

    def norm(x, ln):
        return F.layer_norm(x, (HIDDEN,), ln.weight, ln.bias, ln.eps)

    hidden = model.embeddings(input_ids=ids)
    for layer in model.encoder.layer:
        self_attention = layer.attention.self
        prefix = self_attention.layerlens_prefix
        mixed = reference_attention(self_attention, hidden, keep, prefix.keys, prefix.values)
        attention_out = layer.attention.output
        attended = norm(F.linear(mixed, *weights(attention_out.dense)) + hidden, attention_out.LayerNorm)
        inner = F.gelu(F.linear(attended, *weights(layer.intermediate.dense)))
        hidden = norm(F.linear(inner, *weights(layer.output.dense)) + attended, layer.output.LayerNorm)
    return hidden


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
# None: the layer's own 1/√d; 0.7: a layer whose `scaling` is another keeps it (sdpa's default would be 1/√d)
@pytest.mark.parametrize("scaling", [None, 0.7])
def test_each_prefixed_self_attention_equals_attention_written_out_by_hand(family, attn, scaling):
    model = with_random_prefixes(tiny_encoder(family, attn))
    ids, keep = padded_batch()
    seen = []
    for layer in model.encoder.layer:
        if scaling is not None:
            layer.attention.self.scaling = scaling
        layer.attention.self.register_forward_hook(
            lambda module, args, kwargs, output: seen.append((module, args[0], output[0])), with_kwargs=True
        )
    with torch.no_grad():
        model(input_ids=ids, attention_mask=keep)
    assert len(seen) == len(PREFIX_LENGTHS)
    real = keep.bool()
    for module, hidden, output in seen:
        prefix = module.layerlens_prefix
        with torch.no_grad():
            expected = reference_attention(module, hidden, keep, prefix.keys, prefix.values, scaling)
            without_prefix = reference_attention(module, hidden, keep, prefix.keys[:0], prefix.values[:0])
        assert not torch.allclose(expected[real], without_prefix[real], atol=1e-2)  # the prefix matters here
        torch.testing.assert_close(output[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_the_prefixed_encoder_equals_a_hand_written_forward(attn):
    model = with_random_prefixes(tiny_encoder("bert", attn))
    ids, keep = padded_batch()
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=keep).last_hidden_state
        expected = reference_encoder(model, ids, keep)
    real = keep.bool()
    torch.testing.assert_close(output[real], expected[real], atol=1e-5, rtol=1e-5)
