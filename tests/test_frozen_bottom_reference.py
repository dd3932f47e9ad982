"""The frozen-bottom cache against references that do not use it: an uncached model in eval mode, training without
the cache, and a count of how often each frozen module actually runs."""

import copy

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from layerlens.training.frozen_bottom import FrozenBottomCache

DEPTH = 2  # of 3 layers: the bottom two are frozen and cached
EXAMPLES = [[5, 6, 7, 8, 9], [11, 12, 13], [21, 22, 23, 24, 25, 26, 27], [31, 32, 33, 34], [41, 42], [51, 52, 53]]
LABELS = [0, 1, 0, 1, 1, 0]


def tiny_classifier(dropout: float):
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    model = BertForSequenceClassification(config)
    for name, p in model.named_parameters():
        below = name.startswith("bert.embeddings.") or any(
            name.startswith(f"bert.encoder.layer.{i}.") for i in range(DEPTH)
        )
        p.requires_grad_(not below)
    return model


def batch(indices: list[int]) -> dict:
    """The examples at `indices`, padded to the longest, with token types (first half 0, second half 1)."""
    rows = [EXAMPLES[i] for i in indices]
    width = max(map(len, rows))
    pad = [width - len(r) for r in rows]
    return {
        "input_ids": torch.tensor([r + [0] * p for r, p in zip(rows, pad)]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * p for r, p in zip(rows, pad)]),
        "token_type_ids": torch.tensor(
            [[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) + [0] * p for r, p in zip(rows, pad)]
        ),
        "labels": torch.tensor([LABELS[i] for i in indices]),
    }


# Two epochs over the same six examples, batched and padded differently in each.
EPOCHS = [[[0, 1], [2, 3], [4, 5]], [[5, 2], [1, 4], [3, 0]]]


def test_a_train_mode_fill_equals_the_bottom_layers_run_in_eval_mode():
    cached = tiny_classifier(dropout=0.3)
    reference = copy.deepcopy(cached).eval()
    FrozenBottomCache(cached, DEPTH)
    cached.train()
    # Layers 1 .. DEPTH-1 pass the bottom's output on, so the last bottom layer's output is what the cache serves.
    served = []
    cached.bert.encoder.layer[DEPTH - 1].register_forward_hook(lambda module, args, output: served.append(output))
    inputs = batch([0, 1, 2])
    cached(**inputs)  # the fill, in train mode
    cached(**batch([2, 0, 1]))  # served from the cache
    with torch.no_grad():
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        expected = reference.bert(**model_inputs, output_hidden_states=True).hidden_states[DEPTH]
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(served[0][real], expected[real], atol=1e-5, rtol=1e-5)
    for i, j in enumerate([2, 0, 1]):  # the second pass's rows, in its order
        n = len(EXAMPLES[j])
        torch.testing.assert_close(served[1][i, :n], expected[j, :n], atol=1e-5, rtol=1e-5)


def train(model: nn.Module, epochs: list[list[list[int]]]) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for epoch in epochs:
        for indices in epoch:
            loss = model(**batch(indices)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return losses


def test_training_with_the_cache_equals_training_without_it():
    plain = tiny_classifier(dropout=0.0)
    # A key bias adds q.b to every score of a query's row, which softmax cancels: its exact gradient is zero, and
    # AdamW (which divides by the gradient's own size) would turn the rounding left in its place into lr-sized steps
    # that differ with the order of summation. Frozen, so that equality is asked only of what training can move.
    for name, p in plain.named_parameters():
        if name.endswith("attention.self.key.bias"):
            p.requires_grad_(False)
    cached = copy.deepcopy(plain)
    cache = FrozenBottomCache(cached, DEPTH)
    expected = train(plain, EPOCHS)
    losses = train(cached, EPOCHS)
    assert cache.hits == len(EXAMPLES)  # the second epoch was served from the cache
    assert len(set(expected)) == len(expected)  # training moved: no two steps share a loss
    torch.testing.assert_close(losses, expected, atol=1e-5, rtol=1e-5)
    trained = dict(plain.named_parameters())
    for name, p in cached.named_parameters():
        torch.testing.assert_close(p, trained[name], atol=1e-5, rtol=1e-5, msg=name)


def count_calls(modules: dict[str, nn.Module]) -> dict[str, int]:
    calls = dict.fromkeys(modules, 0)
    for name, module in modules.items():
        module.register_forward_hook(lambda m, args, output, name=name: calls.__setitem__(name, calls[name] + 1))
    return calls


def computing(model: nn.Module, prefix: str) -> dict[str, nn.Module]:
    """The modules under `prefix` that compute: those holding parameters of their own (the embeddings' tables and
    LayerNorm, the layers' linear maps and LayerNorms), not the containers whose forward the cache replaces."""
    return {
        name: m
        for name, m in model.named_modules()
        if name.startswith(prefix) and any(True for _ in m.parameters(recurse=False))
    }


def test_each_frozen_module_runs_once_per_example_over_two_epochs():
    model = tiny_classifier(dropout=0.1)
    FrozenBottomCache(model, DEPTH)
    below = ["bert.embeddings.", *(f"bert.encoder.layer.{i}." for i in range(DEPTH))]
    frozen = count_calls({k: v for prefix in below for k, v in computing(model, prefix).items()})
    top = count_calls(computing(model, f"bert.encoder.layer.{DEPTH}."))
    # The embeddings' three tables and LayerNorm; per layer query, key, value, the attention's output map and
    # LayerNorm, the intermediate and output maps and the last LayerNorm.
    assert len(frozen) == 4 + DEPTH * 8 and len(top) == 8
    train(model, EPOCHS)
    # Each first-epoch batch brings new examples: one call each. The second epoch, rebatched, is served whole.
    first_epoch, all_batches = len(EPOCHS[0]), sum(map(len, EPOCHS))
    assert frozen == dict.fromkeys(frozen, first_epoch)
    assert top == dict.fromkeys(top, all_batches)
