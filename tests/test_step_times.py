"""The measured time model (issue 21): fitting and pricing measured step times (planning/step_times.py), the planner
under them, and the calibration that times them (lens/calibration.py) with its cache. No test times anything: the
calibration's timer is replaced by a deterministic one where numbers are checked."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from layerlens.errors import LayerLensError
from layerlens.lens import calibration
from layerlens.lens.apply import task_head
from layerlens.lens.sites import discover_sites, encoder_layers
from layerlens.methods import Build, Menu
from layerlens.models import RandomBertBackbone
from layerlens.planning.planner import PlannerSettings, make_plan
from layerlens.planning.step_times import StepTimes, fit_line, interpolate
from tests.test_planning import WORKLOAD, spec, tiny_bert

TIMES = StepTimes(
    layers=2,
    epochs=4,
    full_ms=100.0,
    depth_ms={0: 60.0, 2: 20.0},
    option_ms={"lora/query": (1.0, 0.5), "lora/value": (1.0, 0.5), "adapter/ffn_block": (2.0, 1.0)},
    cached_depth_ms={1: 25.0, 2: 5.0},
)


@given(
    st.floats(0, 50, allow_nan=False),
    st.floats(0, 5, allow_nan=False),
    st.lists(st.integers(1, 64), min_size=2, max_size=5, unique=True),
)
def test_fit_line_recovers_a_non_negative_line_from_exact_times(intercept, slope, sizes):
    a, b = fit_line(sizes, [intercept + slope * s for s in sizes])
    assert a == pytest.approx(intercept, abs=1e-6) and b == pytest.approx(slope, abs=1e-9)


def test_fit_line_never_prices_an_option_below_zero():
    assert fit_line([1, 32], [5.0, 1.0]) == (3.0, 0.0)  # slower at the smaller size: the mean, flat
    assert fit_line([1, 32], [-2.0, -1.0]) == (0.0, 0.0)
    a, b = fit_line([1, 32], [-5.0, 10.0])  # a negative intercept: the slope through the origin
    assert a == 0.0 and b == pytest.approx((1 * -5.0 + 32 * 10.0) / (1 + 32 * 32))
    assert fit_line([8], [4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError):
        fit_line([1, 2], [1.0])


def test_step_times_interpolate_the_depths_and_mix_the_cached_epochs():
    assert interpolate({0: 60.0, 2: 20.0}, 1) == 40.0 and interpolate({0: 60.0, 2: 20.0}, 5) == 20.0
    # lowest 1: the first epoch fills the cache (40 ms, uncached), the other three read it (25 ms)
    assert TIMES.step_ms(1) == pytest.approx((40.0 + 3 * 25.0) / 4)
    assert TIMES.step_ms(0) == 60.0  # nothing below layer 0 to cache
    assert TIMES.fraction(2) == pytest.approx((20.0 + 3 * 5.0) / 4 / 100.0)
    assert TIMES.full_ft_step_ms() == 100.0 and TIMES.latency_ms("lora", "query", 8) == 5.0
    with pytest.raises(LayerLensError, match=r"^calibration: prefix at attention sites was not timed"):
        TIMES.latency_ms("prefix", "attention", 4)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"full_ms": 0.0}, r"full fine-tuning's step must take some time"),
        ({"depth_ms": {3: 1.0}}, r"depth_ms has depth 3 outside 0..2"),
        ({"depth_ms": {}}, r"depth_ms must time at least one depth"),
    ],
)
def test_bad_step_times_are_refused_by_name(fields, message):
    base = dict(layers=2, epochs=1, full_ms=10.0, depth_ms={0: 5.0}, option_ms={})
    with pytest.raises(LayerLensError, match=message):
        StepTimes(**{**base, **fields})


def measured_plan(budgets):
    sites = discover_sites(tiny_bert(), ["query", "value", "ffn_block"])
    specs = [spec(s, 2.0 if s.layer == 0 else 1.0) for s in sites]  # layer 0 looks more useful
    return make_plan(specs, WORKLOAD, budgets, PlannerSettings(), TIMES)


def test_the_planner_prices_a_plan_with_the_measured_depth_and_option_times():
    plan = measured_plan({"params": 2000.0})
    for c in plan.adapted():
        assert c.costs.latency_ms == pytest.approx(TIMES.latency_ms(c.method, c.kind, c.size))
    latency = sum(c.costs.latency_ms for c in plan.choices)
    expected = 100 * (TIMES.fraction(plan.lowest_adapted_layer()) + latency / TIMES.full_ms)
    assert plan.train_time_pct == pytest.approx(expected)


def test_a_training_time_budget_under_measured_times_keeps_the_layers_it_cannot_afford_frozen():
    # Layer 0 costs 60% of full fine-tuning's step alone (measured): a 50% budget leaves it frozen.
    plan = measured_plan({"params": 2000.0, "train_time_pct": 50.0})
    assert plan.lowest_adapted_layer() == 1 and plan.train_time_pct <= 50.0
    loose = measured_plan({"params": 2000.0, "train_time_pct": 95.0})
    assert loose.lowest_adapted_layer() == 0 and loose.train_time_pct <= 95.0


def fake_timer(calls: list):
    """A deterministic stand-in for timed_rounds: each model's steps take 100 ms for full fine-tuning; else 10 ms
    per layer that backpropagation runs through (from the lowest with a trainable tensor) plus 1 ms per thousand
    trainable parameters (the head's and the options')."""

    def rounds(models, batches, steps):
        calls.append(steps)
        return [[timed(model)] * steps for model in models]

    def timed(model):
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if all(p.requires_grad for p in model.parameters()):
            return 100.0
        prefix, layers = encoder_layers(model)
        lowest = min((int(n.split(prefix + ".")[1].split(".")[0]) for n in names if prefix + "." in n), default=2)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return 10.0 * (len(layers) - lowest) + trainable / 1000

    return rounds


def calibration_inputs(tmp_path, monkeypatch, calls, caches=True) -> tuple:
    monkeypatch.setattr(calibration, "timed_rounds", fake_timer(calls))
    model = RandomBertBackbone("tiny").classifier(2)  # 2 layers, hidden 32
    sites = discover_sites(model, ["query", "ffn_block"])
    menu = Menu(("lora", "adapter"), {})
    options = calibration.offered_options(sites, menu, {"lora": [1, 8], "adapter": [2, 4, 16]})
    batches = [
        {
            "input_ids": torch.randint(5, 100, (2, 6)),
            "attention_mask": torch.ones(2, 6, dtype=torch.long),
            "labels": torch.tensor([0, 1]),
        }
    ] * 3
    build = Build(tuple(task_head(model)), 2.0, 0.0)
    return model, batches, options, menu, build, 4, caches, 2, tmp_path


def calibrated(tmp_path, monkeypatch, calls):
    return calibration.calibrate(*calibration_inputs(tmp_path, monkeypatch, calls))


def test_calibration_times_every_depth_and_option_and_a_sweep_reads_it_from_its_cache(tmp_path, monkeypatch):
    calls: list = []
    times, seconds = calibrated(tmp_path, monkeypatch, calls)
    assert seconds > 0 and times.layers == 2 and times.full_ms == 100.0
    assert sorted(times.depth_ms) == [0, 1, 2] and sorted(times.cached_depth_ms) == [1, 2]
    assert set(times.option_ms) == {"lora/query", "adapter/ffn_block"}
    # Backpropagation through 2 layers, 1, or none past the head: 10 ms a layer, plus the trainable parameters.
    assert times.depth_ms[0] - times.depth_ms[1] == pytest.approx(10.0, abs=0.1)
    assert times.depth_ms[1] - times.depth_ms[2] == pytest.approx(10.0, abs=0.1)
    # An option's added time per site: its step at every layer's site less the backbone's step with backpropagation
    # to layer 0 (both with layer 0's smallest tensor trainable), over the sites; timed at the smallest and largest
    # size offered. LoRA on a 32 x 32 query: 64 parameters per rank.
    expected = fit_line([1, 8], [64 * r / 1000 for r in (1, 8)])
    assert times.option_ms["lora/query"] == pytest.approx(expected)
    before = len(calls)
    again, seconds = calibrated(tmp_path, monkeypatch, calls)
    assert seconds == 0.0 and len(calls) == before and again == times  # read back, nothing timed
    (cached,) = tmp_path.glob("*.json")
    assert json.loads(cached.read_text())["layers"] == 2


def test_calibration_leaves_the_global_random_state_as_it_was(tmp_path, monkeypatch):
    inputs = calibration_inputs(tmp_path, monkeypatch, [])
    torch.manual_seed(5)
    calibration.calibrate(*inputs)  # it draws LoRA's and the adapters' weights
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


def test_calibration_times_on_the_device_it_is_given_and_keys_its_file_by_it(tmp_path, monkeypatch):
    model, batches, options, *rest = calibration_inputs(tmp_path, monkeypatch, [])
    seen = []

    def rounds(models, batches, steps):
        seen.append({str(p.device) for m in models for p in m.parameters()} | {str(batches[0]["input_ids"].device)})
        return [[1.0] * steps for _ in models]

    monkeypatch.setattr(calibration, "timed_rounds", rounds)
    calibration.calibrate(model, batches, options, *rest, device="meta")
    assert seen and all(devices == {"meta"} for devices in seen)  # every copy and batch moved there
    assert next(model.parameters()).device.type == "cpu"  # the model itself stays where it is
    keys = {calibration.calibration_key(model, batches, options, 2, True, device) for device in ("cpu", "cuda")}
    assert len(keys) == 2


@pytest.mark.parametrize(
    ("accelerator", "cuda", "device"),
    [("auto", False, "cpu"), ("auto", True, "cuda"), ("gpu", True, "cuda"), ("cpu", True, "cpu")],
)
def test_the_measured_time_model_calibrates_where_the_trainer_will_train(monkeypatch, accelerator, cuda, device):
    from omegaconf import OmegaConf

    from layerlens.pipeline import training_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert training_device(OmegaConf.create({"accelerator": accelerator})) == device


def test_the_depths_times_never_fall_as_backpropagation_runs_deeper():
    assert calibration.monotone({0: 5.0, 1: 9.0, 2: 3.0}) == {0: 9.0, 1: 9.0, 2: 3.0}
    assert calibration.depths(2) == [0, 1, 2] and calibration.depths(30) == [0, 7, 15, 22, 29, 30]


def test_a_run_with_measured_times_logs_the_calibration_and_counts_it_in_its_total_time(tmp_path, monkeypatch):
    from layerlens.pipeline import run_experiment
    from tests.conftest import compose_config

    monkeypatch.setattr(calibration, "timed_rounds", fake_timer([]))
    log = tmp_path / "runs.jsonl"
    overrides = [
        "model=tiny",
        "trainer=debug",
        "baseline=layerlens",
        "baseline.profile.num_batches=4",
        "baseline.planner.time_model=measured",
        f"baseline.planner.calibration_dir={tmp_path / 'calibration'}",
        "budget.train_time_pct=80",
        "logger=jsonl",
        f"logger.path={log}",
    ]
    run_experiment(compose_config("run", overrides), tmp_path / "out")
    metrics = json.loads(log.read_text().splitlines()[-1])["metrics"]
    assert metrics["time/calibrate_s"] > 0 and metrics["plan/train_time_pct"] <= 80
    parts = ("time/calibrate_s", "time/profile_s", "time/plan_s", "time/train_s")
    assert metrics["time/total_s"] == pytest.approx(sum(metrics[p] for p in parts))
    assert len(list((tmp_path / "calibration").glob("*.json"))) == 1
    # Another seed shuffles its batches otherwise, yet calibrates on the same typical batches: it reads the file.
    run_experiment(compose_config("run", [*overrides, "seed=1"]), tmp_path / "out-1")
    assert json.loads(log.read_text().splitlines()[-1])["metrics"]["time/calibrate_s"] == 0.0
    assert len(list((tmp_path / "calibration").glob("*.json"))) == 1


def test_typical_batches_are_the_first_cut_or_padded_to_the_epochs_mean_padded_length():
    def batch(length: int) -> dict:
        ids = torch.arange(1, 2 * length + 1).reshape(2, length)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(), "y": torch.ones(2)}

    first, second = calibration.typical_batches(iter([batch(4), batch(9), batch(11)]), 2)  # mean length 8
    assert first["input_ids"].tolist() == [[1, 2, 3, 4, 0, 0, 0, 0], [5, 6, 7, 8, 0, 0, 0, 0]]
    assert first["attention_mask"].tolist()[0] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert first["labels"].tolist()[1] == [5, 6, 7, 8, -100, -100, -100, -100]
    assert second["input_ids"].tolist() == [list(range(1, 9)), list(range(10, 18))]  # cut: the first 8 columns
    assert torch.equal(first["y"], torch.ones(2))  # not a row of tokens: as it was
    with pytest.raises(ValueError, match="at least one training batch"):
        calibration.typical_batches(iter([]), 2)


def test_models_timed_together_take_turns_on_each_batch():
    order = []
    models = [RandomBertBackbone("tiny").classifier(2) for _ in range(2)]
    for name, model in zip("ab", models):
        model.register_forward_hook(lambda module, args, kwargs, out, name=name: order.append(name), with_kwargs=True)
    batch = {"input_ids": torch.randint(5, 100, (2, 6)), "labels": torch.tensor([0, 1])}
    times = calibration.timed_rounds(models, [batch], 3)
    assert order == ["a", "b"] * 4  # one untimed round, then three timed
    assert [len(t) for t in times] == [3, 3] and all(ms > 0 for t in times for ms in t)
