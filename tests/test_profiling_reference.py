"""Profiling against independent references: per-batch statistics against gradients taken by hand with
torch.autograd.grad, and Profile.utility / Profile.validation on hand-built profiles with known answers."""

import re
import time

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from transformers import BertConfig, BertForSequenceClassification

from layerlens.errors import LayerLensError
from layerlens.lens.profiling import Profile, ProfileSettings, profile_sites
from layerlens.lens.sites import discover_sites

KINDS = ["query", "key", "value", "attn_out", "ffn_in", "ffn_out", "attn_block", "ffn_block", "attention"]


def tiny_bert(dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=50,
        max_position_embeddings=16,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


def batches(count: int = 3) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(count):
        ids = torch.randint(1, 50, (3, 5 + i), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, 3:] = 0  # padding in one row: tokens and padded length differ
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, i % 2])})
    return out


def by_hand(model, sites, batch) -> np.ndarray:
    """(statistic, site) for one batch: gradients of the batch's loss w.r.t. each site's profiled parameters
    (a prefix site's: the key and value projections'), reduced in float64."""
    model.eval()
    params = {id(p): p for site in sites for module in site.profiled for p in module.parameters()}
    grads = dict(zip(params, torch.autograd.grad(model(**batch).loss, list(params.values()))))
    out = np.zeros((3, len(sites)))
    for j, site in enumerate(sites):
        for module in site.profiled:
            for p in module.parameters():
                g, w = grads[id(p)].double(), p.detach().double()
                out[1, j] += float((g * g).sum())
                out[2, j] += float((w * g).abs().sum())
        out[0, j] = np.sqrt(out[1, j])
    return out


def test_the_profiled_modules_of_a_prefix_are_the_key_and_value_projections():
    model = tiny_bert()
    site = discover_sites(model, ["attention"])[1]
    attention = model.bert.encoder.layer[1].attention.self
    assert site.module is attention
    assert site.profiled == (attention.key, attention.value)  # not the query: a prefix extends keys and values


def test_per_batch_statistics_equal_gradients_taken_by_hand():
    model = tiny_bert()
    sites = discover_sites(model, KINDS)
    data = batches(3)
    profile = profile_sites(model, sites, iter(data), ProfileSettings(num_batches=2))
    assert profile.sites == [s.name for s in sites]
    for name in ("grad_norm", "fisher", "sensitivity"):
        assert profile.per_batch[name].shape == (2, len(sites))  # num_batches of the 3 given, in order
    for b, batch in enumerate(data[:2]):
        expected = by_hand(model, sites, batch)
        for i, name in enumerate(("grad_norm", "fisher", "sensitivity")):
            np.testing.assert_allclose(profile.per_batch[name][b], expected[i], rtol=1e-5, err_msg=f"{name}, batch {b}")
    # the workload measured on the same batches: batch size, mean non-padding tokens, mean padded length
    assert profile.batch_size == 3
    assert profile.tokens_per_batch == pytest.approx(((3 + 5 + 5) + (3 + 6 + 6)) / 2)
    assert profile.seq_len == pytest.approx((5 + 6) / 2)
    # hooks gone and gradients freed: a later backward accumulates as usual
    assert all(p.grad is None for p in model.parameters())
    model(**data[0]).loss.backward()
    assert model.classifier.weight.grad is not None


def test_a_site_sharing_parameters_with_another_counts_them_in_both():
    """attn_block (the attention output block) holds attn_out's dense layer and a LayerNorm: its Fisher trace is
    attn_out's plus the LayerNorm's, and a prefix's is its key's plus its value's."""
    model = tiny_bert()
    sites = discover_sites(model, ["key", "value", "attn_out", "attn_block", "attention"])
    profile = profile_sites(model, sites, iter(batches(2)), ProfileSettings(num_batches=2))
    fisher = dict(zip(profile.sites, profile.per_batch["fisher"].T))
    norm = model.bert.encoder.layer[0].attention.output.LayerNorm
    grads = torch.autograd.grad(model.eval()(**batches(2)[0]).loss, list(norm.parameters()))
    norm_fisher = sum(float((g.double() ** 2).sum()) for g in grads)
    assert fisher["L0.attn_block"][0] == pytest.approx(fisher["L0.attn_out"][0] + norm_fisher, rel=1e-6)
    assert norm_fisher > 0
    np.testing.assert_allclose(fisher["L1.attention"], fisher["L1.key"] + fisher["L1.value"], rtol=1e-6)


def test_profiling_runs_in_eval_mode_so_dropout_changes_nothing():
    with_dropout, without = tiny_bert(dropout=0.5), tiny_bert(dropout=0.0)
    without.load_state_dict(with_dropout.state_dict())
    profiles = []
    for model in (with_dropout, without):
        model.train()
        torch.manual_seed(3)
        profiles.append(profile_sites(model, discover_sites(model, KINDS), iter(batches(2)), ProfileSettings(2)))
        assert model.training  # the caller's mode is restored
    for name in ("grad_norm", "fisher", "sensitivity"):
        np.testing.assert_allclose(profiles[0].per_batch[name], profiles[1].per_batch[name], rtol=1e-6)


# A hand-built profile of 4 sites over 4 batches. Even batches (0, 2) and odd batches (1, 3) differ, so that
# which half is read where shows in the answers.
GRAD_EVEN, GRAD_ODD = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
FISHER_EVEN, FISHER_ODD = [1.0, 1.0, 1.0, 5.0], [4.0, 3.0, 2.0, 1.0]
SENS_EVEN, SENS_ODD = [10.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]


def hand_profile(weights: dict[str, float], sensitivity=(SENS_EVEN, SENS_ODD)) -> Profile:
    def rows(even, odd):  # batches 0..3, each batch of a half equal to that half's values but for a spread
        even, odd = np.array(even), np.array(odd)
        return np.stack([even - 0.5, odd + 0.25, even + 0.5, odd - 0.25])  # halves' means: even, odd

    per_batch = {
        "grad_norm": rows(GRAD_EVEN, GRAD_ODD),
        "fisher": rows(FISHER_EVEN, FISHER_ODD),
        "sensitivity": rows(*sensitivity),
    }
    return Profile(
        ["a", "b", "c", "d"], per_batch, weights, batch_size=8, tokens_per_batch=50.0, seq_len=9.0, seconds=1.5
    )


def test_utility_is_each_weighted_statistic_over_its_mean_across_sites():
    profile = hand_profile({"grad_norm": 1.0, "fisher": 2.0})  # sensitivity unweighted: it must not count
    # Over all 4 batches: grad_norm means (even + odd) / 2 = [1.5, 1.5, 3.5, 3.5], their mean over sites 2.5;
    # fisher [2.5, 2, 1.5, 3], mean 2.25.
    expected = np.array([1.5, 1.5, 3.5, 3.5]) / 2.5 + 2 * np.array([2.5, 2.0, 1.5, 3.0]) / 2.25
    np.testing.assert_allclose(profile.utility(), expected)
    # even batches alone: grad_norm [1, 2, 3, 4] / 2.5, fisher [1, 1, 1, 5] / 2
    np.testing.assert_allclose(
        profile.utility(slice(0, None, 2)), np.array([0.4, 0.8, 1.2, 1.6]) + 2 * np.array([0.5, 0.5, 0.5, 2.5])
    )
    # the statistics themselves: means over the batches asked for
    np.testing.assert_allclose(profile.statistic("fisher", slice(1, None, 2)), FISHER_ODD)


def test_utility_of_a_statistic_that_is_zero_everywhere_adds_nothing_rather_than_nan():
    zero = ([0.0] * 4, [0.0] * 4)
    profile = hand_profile({"grad_norm": 1.0, "sensitivity": 3.0}, sensitivity=zero)
    np.testing.assert_allclose(profile.utility(), np.array([1.5, 1.5, 3.5, 3.5]) / 2.5)


def test_validation_predicts_one_half_of_the_batches_from_the_other():
    profile = hand_profile({"grad_norm": 1.0, "fisher": 1.0})
    # Utility from the even batches: [0.4, 0.8, 1.2, 1.6] + [0.5, 0.5, 0.5, 2.5] = [0.9, 1.3, 1.7, 4.1], ranks 1..4.
    # Held out, the odd batches: grad_norm [2, 1, 4, 3] -> Spearman 1 - 6 * 4 / (4 * 15) = 0.6;
    # fisher [4, 3, 2, 1] -> -1.
    held_out = [0.9, 1.3, 1.7, 4.1]
    grad, fisher = spearmanr(held_out, GRAD_ODD), spearmanr(held_out, FISHER_ODD)
    assert grad.statistic == pytest.approx(0.6) and fisher.statistic == pytest.approx(-1.0)
    utility = np.array([1.5, 1.5, 3.5, 3.5]) / 2.5 + np.array([2.5, 2.0, 1.5, 3.0]) / 2.25  # all batches
    metrics = profile.validation()
    assert metrics == pytest.approx(
        {
            "profile/utility_cv": utility.std() / utility.mean(),
            "profile/grad_corr": 0.6,
            "profile/grad_corr_p": grad.pvalue,
            "profile/fisher_corr": -1.0,
            "profile/fisher_corr_p": fisher.pvalue,
            "profile/batches": 4.0,
            "time/profile_s": 1.5,
        }
    )


# Found by mutation testing (experiments/mutation.py): what the tests above left free to change.


def test_a_float64_model_is_profiled_in_float64():
    model = tiny_bert().double()
    sites = discover_sites(model, KINDS)
    data = batches(2)
    profile = profile_sites(model, sites, iter(data), ProfileSettings(num_batches=2))
    for b, batch in enumerate(data):
        expected = by_hand(model, sites, batch)
        for i, name in enumerate(("grad_norm", "fisher", "sensitivity")):
            # float32 anywhere in the sums would show at about 1e-7
            np.testing.assert_allclose(profile.per_batch[name][b], expected[i], rtol=1e-12, err_msg=name)


def test_the_profile_keeps_the_positive_weights_as_floats_the_first_batchs_size_and_its_time():
    model = tiny_bert()
    data = batches(2)
    data[1] = {k: v[:2] for k, v in data[1].items()}  # a shorter last batch
    settings = ProfileSettings(num_batches=2, weights={"grad_norm": 2, "fisher": 0.0, "sensitivity": 1.0})
    start = time.perf_counter()
    profile = profile_sites(model, discover_sites(model, ["query"]), iter(data), settings)
    elapsed = time.perf_counter() - start
    assert profile.weights == {"grad_norm": 2.0, "sensitivity": 1.0}  # a weight of 0 leaves its statistic out
    assert all(type(w) is float for w in profile.weights.values())
    assert profile.batch_size == 3  # the loader's batch size, not the short last batch's
    assert 0 < profile.seconds <= elapsed


def test_fewer_batches_than_asked_for_are_refused_naming_both_counts():
    model = tiny_bert()
    message = "baseline.profile.num_batches must be <= 2 (the training batches available), got 3"
    with pytest.raises(LayerLensError, match=f"^{re.escape(message)}$"):
        profile_sites(model, discover_sites(model, ["query"]), iter(batches(2)), ProfileSettings(num_batches=3))


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"num_batches": 1}, "baseline.profile.num_batches must be an integer >= 2, got 1"),
        (
            {"weights": ["fisher"]},
            "baseline.profile.weights must map statistics (grad_norm, fisher, sensitivity) to weights, got ['fisher']",
        ),
        (
            {"weights": {"fisher": 1.0, "hessian": 1.0, "curvature": 1.0}},
            "baseline.profile.weights: unknown statistic 'curvature' (choose from: grad_norm, fisher, sensitivity)",
        ),
        ({"weights": {"fisher": -1.0}}, "baseline.profile.weights.fisher must be a number >= 0, got -1.0"),
        (
            {"weights": {"grad_norm": 0, "fisher": 0.0}},
            "baseline.profile.weights must have one weight > 0, got {'grad_norm': 0, 'fisher': 0.0}",
        ),
    ],
)
def test_bad_profile_settings_are_refused_in_one_line_naming_the_field(settings, message):
    with pytest.raises(LayerLensError, match=f"^{re.escape(message)}$"):
        ProfileSettings(**settings)


def test_profiling_draws_its_progress_on_stderr_and_leaves_nothing_behind(capsys, monkeypatch):
    model = tiny_bert()
    sites = discover_sites(model, ["query"])
    profile_sites(model, sites, iter(batches(2)), ProfileSettings(num_batches=2))
    out, err = capsys.readouterr()
    assert (out, err.strip()) == ("", "")  # not a terminal: the bar is transient, nothing of it is left
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # as in a terminal, where rich draws the bar as it goes
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    profile_sites(model, sites, iter(batches(2)), ProfileSettings(num_batches=2))
    out, err = capsys.readouterr()
    assert out == ""  # stdout stays for results
    drawn = re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err))  # the lines drawn, less ANSI codes
    assert any(line.startswith("profiling ") for line in drawn)


def test_validation_holds_the_even_batches_against_the_mean_of_all_the_odd_ones():
    """Six batches; the odd ones rank the sites three different ways, so only their mean gives this answer."""
    grad = np.array([[1, 2, 3, 4], [4, 1, 2, 3], [1, 2, 3, 4], [1, 4, 3, 2], [1, 2, 3, 4], [2, 3, 1, 4]], float)
    profile = Profile(
        ["a", "b", "c", "d"],
        {name: grad.copy() for name in ("grad_norm", "fisher", "sensitivity")},
        {"grad_norm": 1.0},
        batch_size=8,
        tokens_per_batch=50.0,
        seq_len=9.0,
        seconds=1.0,
    )
    held_out = grad[[1, 3, 5]].mean(axis=0)  # [7, 8, 6, 9] / 3
    expected = spearmanr(grad[[0, 2, 4]].mean(axis=0), held_out).statistic
    assert expected == pytest.approx(0.4)
    metrics = profile.validation()
    assert metrics["profile/grad_corr"] == pytest.approx(expected)
    assert metrics["profile/fisher_corr"] == pytest.approx(expected)
    assert metrics["profile/batches"] == 6.0  # batches, not sites
