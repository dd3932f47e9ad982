import copy
import re

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from layerlens.errors import LayerLensError
from layerlens.methods.adapter import adapter_params
from layerlens.methods.layers.adapter import attach_adapter
from layerlens.methods.layers.prefix import attach_prefix
from layerlens.methods.prefix import prefix_params

HIDDEN = 32


def tiny_bert(attn="sdpa"):
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        attn_implementation=attn,
    )
    return BertForSequenceClassification(config).eval()


def batch():
    torch.manual_seed(1)
    ids = torch.randint(1, 100, (4, 7))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def attach(method, layer, size):
    if method == "adapter":
        return attach_adapter(layer.output, HIDDEN, size)
    return attach_prefix(layer.attention.self, size)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("method,formula", [("adapter", adapter_params), ("prefix", prefix_params)])
def test_parameter_count(method, formula):
    module = attach(method, tiny_bert().bert.encoder.layer[0], 3)
    assert count(module) == formula(HIDDEN, 3)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == formula(HIDDEN, 3)


def test_adapter_formula():
    assert adapter_params(768, 8) == 2 * 768 * 8 + 8 + 768


def test_adapter_on_attention_output_block():
    model = tiny_bert()
    before = model(**batch()).logits
    adapter = attach_adapter(model.bert.encoder.layer[1].attention.output, HIDDEN, 4)
    assert "bert.encoder.layer.1.attention.output.layerlens_adapter.down.weight" in model.state_dict()
    assert torch.equal(model(**batch()).logits, before)
    adapter.up.bias.data += 0.1
    assert not torch.allclose(model(**batch()).logits, before)


# The parameters that get a gradient at init: the adapter's `up` starts at zero, so nothing flows back through it to
# `down` (its gradient is exactly zero) until `up` has moved; a prefix's keys and values both get one at once.
FIRST_STEP = {"adapter": {"up.weight", "up.bias"}, "prefix": {"keys", "values"}}


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_training_steps_move_the_methods_parameters_only(method):
    model = tiny_bert().train()
    model.requires_grad_(False)
    module = attach(method, model.bert.encoder.layer[0], 4)
    frozen = {n: p.clone() for n, p in model.named_parameters() if "layerlens" not in n}
    own = dict(module.named_parameters())
    start = {n: p.detach().clone() for n, p in own.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == len(own)
    # no weight decay: only gradients move a parameter
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)

    model(**batch()).loss.backward()
    assert {n for n, p in own.items() if p.grad.abs().sum() > 0} == FIRST_STEP[method]
    optimizer.step()
    assert {n for n, p in own.items() if not torch.equal(p, start[n])} == FIRST_STEP[method]

    optimizer.zero_grad()
    model(**batch()).loss.backward()
    assert all(p.grad.abs().sum() > 0 for p in own.values())  # `up` has moved: `down` gets its gradient
    optimizer.step()
    assert all(not torch.equal(p, start[n]) for n, p in own.items())
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_output_depends_on_method_params(method):
    model = tiny_bert()
    plain = model(**batch()).logits
    module = attach(method, model.bert.encoder.layer[0], 2)
    attached = model(**batch()).logits
    if method == "adapter":
        assert torch.equal(attached, plain)
    else:
        assert not torch.allclose(attached, plain)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(model(**batch()).logits, attached)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefix_padding_does_not_leak(attn):
    model = tiny_bert(attn)
    for layer in model.bert.encoder.layer:
        attach_prefix(layer.attention.self, 3)
    ids = torch.randint(1, 100, (1, 5))
    padded = torch.cat([ids, torch.randint(1, 100, (1, 4))], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    alone = model(input_ids=ids).logits
    assert torch.allclose(model(input_ids=padded, attention_mask=mask).logits, alone, atol=1e-5)


def test_prefix_matches_between_eager_and_sdpa():
    eager, sdpa = tiny_bert("eager"), tiny_bert("sdpa")
    for model in (eager, sdpa):
        torch.manual_seed(2)
        attach_prefix(model.bert.encoder.layer[0].attention.self, 2)
    assert torch.allclose(eager(**batch()).logits, sdpa(**batch()).logits, atol=1e-5)


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_works_on_lora_wrapped_layer(method):
    peft_model = get_peft_model(tiny_bert().train(), LoraConfig(target_modules=["query", "value", "dense"], r=2))
    layer = peft_model.base_model.model.bert.encoder.layer[0]
    assert "lora" in type(layer.attention.self.query).__module__
    assert "lora" in type(layer.output.dense).__module__
    module = attach(method, layer, 2)
    peft_model(**batch()).loss.backward()
    # the adapter's `down` gets a zero gradient at init because `up` starts at zero
    assert all(p.grad is not None for p in module.parameters())
    assert any(p.grad.abs().sum() > 0 for p in module.parameters())
    assert any("lora_" in n and p.grad is not None for n, p in peft_model.named_parameters())


def test_errors():
    layer = tiny_bert().bert.encoder.layer[0]
    with pytest.raises(ValueError, match="width"):
        attach_adapter(layer.output, HIDDEN, 0)
    with pytest.raises(ValueError, match="length"):
        attach_prefix(layer.attention.self, 0)
    attach_adapter(layer.output, HIDDEN, 2)
    attach_prefix(layer.attention.self, 2)
    with pytest.raises(ValueError):
        attach_adapter(layer.output, HIDDEN, 2)
    with pytest.raises(ValueError):
        attach_prefix(layer.attention.self, 2)


# Found by mutation testing (experiments/mutation.py): what the tests above left free to change.


def test_the_prefix_starts_as_bert_initializes_its_weights():
    """N(0, 0.02), BERT's initializer_range: near zero, so a pretrained layer is barely perturbed at init."""
    torch.manual_seed(3)
    prefix = attach_prefix(tiny_bert().bert.encoder.layer[0].attention.self, 64)  # 64 x 32 draws per tensor
    for p in (prefix.keys, prefix.values):
        assert p.shape == (64, HIDDEN)
        assert abs(p.mean().item()) < 0.002  # about 4.5 standard errors
        assert 0.018 < p.std().item() < 0.022


def attention_with_dropout(p: float):
    """A self-attention whose only randomness is its attention dropout (no hidden dropout in the layer)."""
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=p,
    )
    return BertForSequenceClassification(config).bert.encoder.layer[0].attention.self


def test_the_prefixed_attention_drops_attention_weights_in_training_only():
    attention = attention_with_dropout(0.5)
    attach_prefix(attention, 3)
    hidden = torch.randn(2, 5, HIDDEN)
    attention.train()
    torch.manual_seed(4)
    first = attention(hidden)[0]
    second = attention(hidden)[0]
    assert not torch.allclose(first, second)  # a fresh dropout mask on each pass
    attention.eval()
    assert torch.equal(attention(hidden)[0], attention(hidden)[0])
    without = attention_with_dropout(0.0)
    attach_prefix(without, 3)
    without.load_state_dict(attention.state_dict())  # the same weights and prefix
    without.train()
    torch.testing.assert_close(without(hidden)[0], attention(hidden)[0])  # p = 0: training changes nothing


def test_the_prefixed_attention_refuses_a_kv_cache():
    attention = tiny_bert().bert.encoder.layer[0].attention.self
    attach_prefix(attention, 2)
    with pytest.raises(NotImplementedError, match="^prefix-tuned attention does not support a KV cache$"):
        attention(torch.randn(1, 4, HIDDEN), past_key_values=object())


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_the_method_is_made_on_its_layers_dtype_and_device(method):
    layer = tiny_bert().bert.encoder.layer[0].to(torch.float64)
    assert {p.dtype for p in attach(method, layer, 2).parameters()} == {torch.float64}
    on_meta = copy.deepcopy(tiny_bert().bert.encoder.layer[0]).to("meta")  # a device other than the default
    assert {p.device.type for p in attach(method, on_meta, 2).parameters()} == {"meta"}


@pytest.mark.parametrize("size", [0, -1, True, 2.0, "2", None])
def test_a_size_that_is_not_a_positive_integer_is_refused_in_one_line_naming_it(size):
    layer = tiny_bert().bert.encoder.layer[0]
    with pytest.raises(LayerLensError, match=f"^width must be a positive integer, got {re.escape(repr(size))}$"):
        attach_adapter(layer.output, HIDDEN, size)
    with pytest.raises(LayerLensError, match=f"^length must be a positive integer, got {re.escape(repr(size))}$"):
        attach_prefix(layer.attention.self, size)
    assert not hasattr(layer.output, "layerlens_adapter") and not hasattr(layer.attention.self, "layerlens_prefix")


def test_a_second_method_on_one_block_and_a_prefix_off_self_attention_are_refused_naming_the_block():
    layer = tiny_bert().bert.encoder.layer[0]
    attach_adapter(layer.output, HIDDEN, 2)
    attach_prefix(layer.attention.self, 2)
    with pytest.raises(LayerLensError, match="^BertOutput already has an adapter$"):
        attach_adapter(layer.output, HIDDEN, 2)
    with pytest.raises(LayerLensError, match="^BertSelfAttention already has a prefix$"):
        attach_prefix(layer.attention.self, 2)
    with pytest.raises(
        LayerLensError,
        match=re.escape(
            "BertIntermediate is not a BERT-style self-attention "
            "(query, key, value and scaling) nor a Llama-style one: a prefix cannot be attached"
        ),
    ):
        attach_prefix(layer.intermediate, 2)


def test_the_adapter_adds_up_of_gelu_of_down_to_its_blocks_output():
    block = tiny_bert().bert.encoder.layer[0].output  # BertOutput: LayerNorm(dense(hidden) + residual), eval mode
    adapter = attach_adapter(block, HIDDEN, 4)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in adapter.parameters():  # `up` away from its zero init, so that the adapter shows
            p.copy_(torch.randn_like(p))
    hidden, residual = torch.randn(2, 3, 64), torch.randn(2, 3, HIDDEN)
    norm = block.LayerNorm
    plain = F.layer_norm(
        F.linear(hidden, block.dense.weight, block.dense.bias) + residual, (HIDDEN,), norm.weight, norm.bias, norm.eps
    )
    expected = plain + F.linear(
        F.gelu(F.linear(plain, adapter.down.weight, adapter.down.bias)), adapter.up.weight, adapter.up.bias
    )
    torch.testing.assert_close(block(hidden, residual), expected)
