"""The validity figure in a plan's record: its utilities against gains measured by training each site alone."""

import json

import pytest
from scipy.stats import spearmanr

from layerlens.errors import LayerLensError
from layerlens.planning.validity import measured_gains, utility_validity


def write_gains(path, reference, losses):
    rows = [{"site": None, "selection_loss": reference}] + [
        {"site": s, "selection_loss": v, "trainable": 10} for s, v in losses.items()
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_gain_is_the_reference_loss_minus_the_sites_and_other_trials_are_kept_apart(tmp_path):
    path = write_gains(tmp_path / "gains.jsonl", 0.60, {"L0.query": 0.59, "L1.query": 0.62, "L0.query@x4": 0.50})
    gains = measured_gains(path)
    assert gains == pytest.approx({"L0.query": 0.01, "L1.query": -0.02, "L0.query@x4": 0.10})


def test_the_validity_is_spearman_over_the_measured_sites_only():
    utilities = {"L0.query": 1.0, "L1.query": 2.0, "L2.query": 3.0, "L3.query": 4.0, "L4.query": 5.0}
    gains = {"L0.query": 0.3, "L1.query": 0.1, "L2.query": 0.2, "L4.query": 0.5, "L9.value": 9.0}
    record = utility_validity(utilities, gains)
    expected = spearmanr([1.0, 2.0, 3.0, 5.0], [0.3, 0.1, 0.2, 0.5])
    assert record["plan/utility_validity"] == pytest.approx(expected.statistic) == pytest.approx(0.4)
    assert record["plan/utility_validity_p"] == pytest.approx(expected.pvalue)
    assert record["plan/utility_validity_sites"] == 4


def test_a_utility_ordered_against_the_gains_scores_minus_one():
    utilities = {f"L{i}.key": float(i) for i in range(6)}
    gains = {f"L{i}.key": -float(i) for i in range(6)}
    assert utility_validity(utilities, gains)["plan/utility_validity"] == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "baseline.validity_gains: no file"),
        ('{"site": "L0.query", "selection_loss": 0.5}\n', "has no reference line"),
        ('{"site": null, "selection_loss": 0.5}\nnot json\n', "line 2 is not a measured gain"),
        ('{"site": null}\n', "line 1 is not a measured gain"),
    ],
)
def test_a_bad_gains_file_is_refused_in_one_line_naming_the_field(tmp_path, text, message):
    path = tmp_path / "gains.jsonl"
    if text is not None:
        path.write_text(text)
    with pytest.raises(LayerLensError, match=message) as err:
        measured_gains(path)
    assert "\n" not in str(err.value)


def test_fewer_than_three_measured_sites_are_refused():
    with pytest.raises(LayerLensError, match=r"baseline.validity_gains: 2 of the plan's 3 sites were measured"):
        utility_validity({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.1, "b": 0.2})
