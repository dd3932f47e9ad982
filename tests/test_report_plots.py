"""The report's plots: headline metric vs trainable % and vs total time, each with its Pareto front, and time per
baseline."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from layerlens.analysis.assemble import make_report
from layerlens.analysis.comparison import summarise
from layerlens.analysis.plots import pareto_figure, pareto_front, time_figure, time_pareto_figure
from tests.conftest import compose_config, copy_store

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# baseline -> (trainable %, headline per seed, train s per seed, profile s per seed or None)
RUNS = {
    "full_ft": (100.0, [0.80, 0.82], [100.0, 110.0], None),
    "lora": (0.8, [0.70, 0.74], [40.0, 44.0], None),
    "layerlens": (0.5, [0.78, 0.79], [38.0, 39.0], [6.0, 7.0]),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_template):
    """Finished runs logged straight to an empty MLflow store: CoLA (headline val/mcc), two seeds each, sweep p1."""
    uri = copy_store(store_template, tmp_path_factory.mktemp("plots") / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("layerlens-cola")
    for baseline, (pct, scores, train, profile) in RUNS.items():
        for seed, score in enumerate(scores):
            run = client.create_run(
                experiment,
                run_name=f"{baseline}-cola-s{seed}",
                tags={"baseline": baseline, "task": "cola", "model": "tiny", "seed": str(seed), "sweep": "p1"},
            )
            run_id = run.info.run_id
            client.log_param(run_id, "task.headline_metric", "val/mcc")
            metrics = {"test/mcc": score, "test/acc": 0.5, "params/trainable_pct": pct, "time/train_s": train[seed]}
            metrics["time/total_s"] = train[seed] + (profile[seed] if profile else 0.0)
            if profile:
                metrics["time/profile_s"] = profile[seed]
            for name, value in metrics.items():
                client.log_metric(run_id, name, value)
            client.set_terminated(run_id, "FINISHED")
    return uri


def test_report_writes_its_plots_beside_its_markdown_and_links_them(store, tmp_path):
    files = make_report(compose_config("report", [f"tracking_uri={store}", "sweep=p1", f"out_dir={tmp_path}"]))
    assert [p.name for p in files.plots] == [
        "comparison-p1-pareto.png",
        "comparison-p1-time.png",
        "comparison-p1-time-pareto.png",
    ]
    text = files.markdown.read_text()
    for plot in files.plots:
        assert plot.parent == files.markdown.parent
        assert plot.read_bytes().startswith(PNG_SIGNATURE)
        height, width, _ = imread(plot).shape
        assert height > 300 and width > 500
        assert f"]({plot.name})" in text
    assert f"Source: MLflow store {store}" in text and "time/profile_s" in text and "params/trainable_pct" in text
    table = pd.read_csv(files.csv).set_index("baseline")
    assert table.loc["lora", "headline_ratio"] == pytest.approx(0.72 / 0.81)


def test_pareto_front_keeps_the_points_nothing_beats():
    cost = [100.0, 0.8, 0.5, 0.5, 2.0]
    score = [0.81, 0.72, 0.785, 0.70, 0.785]
    # 0.8 % at 0.72 is beaten by 0.5 % at 0.785; so is 0.5 % at 0.70, and 2 % at 0.785 (same score, more cost).
    assert list(pareto_front(cost, score)) == [True, False, True, False, False]
    assert list(pareto_front([1.0, 1.0], [0.5, 0.5])) == [True, True]  # ties beat neither


def table_of_store():
    rows = [
        {
            "run_id": f"{b}{s}",
            "run_name": f"{b}-cola-s{s}",
            "task": "cola",
            "model": "tiny",
            "baseline": b,
            "seed": str(s),
            "headline": "val/mcc",
            "test/mcc": score,
            "params/trainable_pct": pct,
            "time/train_s": train[s],
            "time/total_s": train[s] + (profile[s] if profile else 0.0),
            **({"time/profile_s": profile[s]} if profile else {}),
        }
        for b, (pct, scores, train, profile) in RUNS.items()
        for s, score in enumerate(scores)
    ]
    return summarise(pd.DataFrame(rows), [])


def test_pareto_plot_draws_each_baseline_with_error_bars_on_a_log_axis_and_rings_the_front():
    fig = pareto_figure(table_of_store(), "title", "caption")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "task cola · model tiny"
    assert "test/mcc" in ax.get_ylabel() and "params/trainable_pct" in ax.get_xlabel()
    labels = ax.get_legend_handles_labels()[1]
    assert set(labels) == {"full_ft", "layerlens", "lora", "Pareto front"}
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert sorted(front.get_xdata()) == [0.5, 100.0]  # layerlens and full_ft; lora is beaten by layerlens
    lora = next(c for c in ax.containers if c.get_label() == "lora")
    vertical = lora.lines[2][-1].get_segments()[0][:, 1]  # the y error bar: the last of the bar line collections
    std = np.std([0.70, 0.74], ddof=1)
    assert sorted(vertical) == pytest.approx([0.72 - std, 0.72 + std])


def test_time_pareto_plot_puts_each_total_time_as_a_share_of_full_fine_tunings():
    fig = time_pareto_figure(table_of_store(), "title", "caption")
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and "time/total_s" in ax.get_xlabel() and "test/mcc" in ax.get_ylabel()
    # full_ft 105 s, lora 42 s, layerlens 38.5 s training + 6.5 s profiling: 45 s; every one on the front.
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert list(front.get_xdata()) == pytest.approx([40.0, 100 * 45 / 105, 100.0])
    assert list(front.get_ydata()) == pytest.approx([0.72, 0.785, 0.81])
    layerlens = next(c for c in ax.containers if c.get_label() == "layerlens")
    horizontal = layerlens.lines[2][0].get_segments()[0][:, 0]  # the x error bar
    std = np.std([44.0, 46.0], ddof=1) / 105 * 100
    assert sorted(horizontal) == pytest.approx([100 * 45 / 105 - std, 100 * 45 / 105 + std])
    assert (
        not time_pareto_figure(table_of_store().drop(columns="total_s_ratio").assign(total_s_ratio=np.nan), "t", "c")
        .axes[0]
        .get_lines()
    )  # no reference: nothing drawn


def test_time_plot_stacks_profiling_on_layerlens_only():
    fig = time_figure(table_of_store(), "title", "caption")
    ax = fig.axes[0]
    train, profile = [c for c in ax.containers if c.get_label().startswith(("training", "profiling"))]
    assert [round(p.get_height(), 6) for p in train.patches] == [105.0, 38.5, 42.0]  # full_ft, layerlens, lora
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["full_ft", "layerlens", "lora"]
    (stacked,) = profile.patches
    assert (stacked.get_y(), stacked.get_height()) == (38.5, 6.5)
    assert profile.get_label() == "profiling (time/profile_s)"


def test_one_seed_and_several_panels_still_plot(tmp_path):
    rows = [
        {
            "run_id": f"r{i}",
            "run_name": f"lora-{t}",
            "task": t,
            "model": "tiny",
            "baseline": "lora",
            "seed": "0",
            "headline": h,
            h.replace("val/", "test/"): 0.5,
            "params/trainable_pct": 1.0,
            "time/train_s": 3.0,
        }
        for i, (t, h) in enumerate([("stsb", "val/pearson"), ("mrpc", "val/acc")])
    ]
    fig = pareto_figure(summarise(pd.DataFrame(rows), []), "title", "caption")
    assert [ax.get_title() for ax in fig.axes] == ["task mrpc · model tiny", "task stsb · model tiny"]
    fig.savefig(tmp_path / "x.png")
    assert (tmp_path / "x.png").read_bytes().startswith(PNG_SIGNATURE)
