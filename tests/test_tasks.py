"""STS-B (regression: Pearson, Spearman) and CoLA (one sentence, no header row: MCC) next to MRPC and RTE."""

import math

import datasets
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from scipy.stats import pearsonr, spearmanr

from layerlens.analysis.assemble import make_report
from layerlens.data import load_task_splits, read_glue_tsv
from layerlens.errors import LayerLensError
from layerlens.pipeline import build_classifier, build_datamodule, run_experiment
from layerlens.settings import resolve_settings
from layerlens.training.classifier import SequenceClassifier, task_metrics
from tests.conftest import compose_config, copy_store
from tests.test_data import task, write_tsv

STSB_HEADER = [
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
]
WORDS = "cat dog sun rain tree book road lamp door cup bird fish"


def stsb_rows(n: int) -> list[list[str]]:
    words = WORDS.split()
    return [
        [
            str(i),
            "main-captions",
            "MSRvid",
            "2012test",
            str(i),
            "none",
            "none",
            f"A {words[i % 12]} is near the {words[(i + 3) % 12]}.",
            f"The {words[(i * 5) % 12]} sleeps.",
            f"{(i * 0.37) % 5:.3f}",
        ]
        for i in range(n)
    ]


def cola_rows(n: int) -> list[list[str]]:
    words = WORDS.split()
    # GLUE's columns: source, label, original label ("*" where unacceptable), sentence
    return [
        [
            "gj04",
            str(i % 2),
            "*" if i % 2 == 0 else "",
            f"The {words[i % 12]} {'ran' if i % 2 else 'very'} {words[(i + 1) % 12]}.",
        ]
        for i in range(n)
    ]


def write_headerless(path, rows):
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def glue_dirs(tmp_path_factory):
    """STS-B-like (header row, float scores) and CoLA-like (no header row, as GLUE ships it) train/dev TSVs."""
    root = tmp_path_factory.mktemp("glue")
    (root / "STS-B").mkdir()
    (root / "CoLA").mkdir()
    write_tsv(root / "STS-B" / "train.tsv", STSB_HEADER, stsb_rows(48))
    write_tsv(root / "STS-B" / "dev.tsv", STSB_HEADER, stsb_rows(40)[8:])
    write_headerless(root / "CoLA" / "train.tsv", cola_rows(48))
    write_headerless(root / "CoLA" / "dev.tsv", cola_rows(40)[8:])
    return root


def test_stsb_scores_are_read_as_floats(glue_dirs):
    splits = load_task_splits(task("stsb", source="embedded", data_dir=glue_dirs / "STS-B"))
    assert splits["train"].column_names == ["text_a", "text_b", "label"]
    assert splits["train"]["label"][:3] == pytest.approx([0.0, 0.37, 0.74])
    assert splits["train"].features["label"].dtype == "float64" and len(splits["dev"]) == 32


@pytest.mark.parametrize("bad", ["abc", "", "nan", "inf"])
def test_a_score_that_is_not_a_finite_number_names_file_line_and_value(tmp_path, bad):
    rows = stsb_rows(2)
    rows[1][-1] = bad
    path = write_tsv(tmp_path / "x.tsv", STSB_HEADER, rows)
    message = rf"x\.tsv:3: label column 'score' holds '{bad}', expected a finite number"
    with pytest.raises(LayerLensError, match=message):
        read_glue_tsv(path, task("stsb", source="embedded", data_dir=tmp_path))


def test_cola_without_a_header_row_reads_every_line_as_a_row(glue_dirs):
    cola = task("cola", source="embedded", data_dir=glue_dirs / "CoLA")
    rows = read_glue_tsv(cola.split_file("train"), cola)
    assert rows.column_names == ["text_a", "label"] and len(rows) == 48  # the first line is a row, not a header
    assert rows[0] == {"text_a": "The cat very dog.", "label": 0} and rows["label"][:4] == [0, 1, 0, 1]


def test_cola_line_numbers_count_from_the_first_row(tmp_path):
    cola = task("cola", source="embedded", data_dir=tmp_path)
    rows = cola_rows(3)
    rows[1][1] = "2"
    with pytest.raises(LayerLensError, match=r"x\.tsv:2: label column 'label' holds '2'"):
        read_glue_tsv(write_headerless(tmp_path / "x.tsv", rows), cola)
    short = cola_rows(3)
    short[2] = short[2][:3]
    with pytest.raises(LayerLensError, match=r"x\.tsv:3: 3 fields where task.column_names has 4"):
        read_glue_tsv(write_headerless(tmp_path / "x.tsv", short), cola)


def test_hub_stsb_and_cola_map_their_columns(monkeypatch):
    hub = {
        "stsb": {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [4.2, 0.5], "idx": [0, 1]},
        "cola": {"sentence": ["a b.", "b a."], "label": [1, 0], "idx": [0, 1]},
    }
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda path, name: datasets.DatasetDict(
            {split: datasets.Dataset.from_dict(hub[name]) for split in ("train", "validation")}
        ),
    )
    stsb = load_task_splits(task("stsb"))
    assert stsb["dev"]["label"] == pytest.approx([4.2, 0.5]) and stsb["dev"]["text_b"] == ["c", "d"]
    cola = load_task_splits(task("cola"))
    assert cola["train"].column_names == ["text_a", "label"] and cola["train"]["label"] == [1, 0]


@pytest.mark.parametrize(
    "name,kind,metrics,headline",
    [
        ("stsb", "regression", ["val/pearson", "val/spearman"], "val/pearson"),
        ("cola", "classification", ["val/acc", "val/f1", "val/mcc"], "val/mcc"),
        ("mrpc", "classification", ["val/acc", "val/f1", "val/mcc"], "val/acc"),
    ],
)
def test_task_kind_metrics_and_headline(name, kind, metrics, headline):
    spec = task(name)
    assert (spec.kind, spec.metric_names, spec.headline_metric) == (kind, metrics, headline)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"headline_metric": "val/acc"},
            r"task.headline_metric must be one of val/pearson, val/spearman, got 'val/acc'",
        ),
        ({"label_names": "[low]"}, r"task.label_names must be null for a regression task"),
        ({"num_labels": 0}, r"task.num_labels must be an integer >= 1, got 0"),
        ({"source": "embedded"}, r"task.data_dir: LayerLens ships no copy of STS-B"),
    ],
)
def test_stsb_config_errors_name_the_field(overrides, message):
    with pytest.raises(LayerLensError, match=message):
        task("stsb", **overrides)


def test_cola_column_names_must_hold_the_named_columns():
    with pytest.raises(LayerLensError, match=r"task.column_names must include 'sentence' \(named by"):
        task("cola", column_names="[source,label,original_label,text]")
    with pytest.raises(LayerLensError, match=r"task.column_names must be a list of distinct non-empty names"):
        task("cola", column_names="[label,label,sentence]")
    with pytest.raises(LayerLensError, match="task.headline_metric must be one of val/acc, val/f1, val/mcc"):
        task("cola", headline_metric="val/pearson")


def test_pearson_and_spearman_match_scipy():
    preds = torch.tensor([0.1, 2.0, 1.4, 3.3, 4.9, 2.2, 0.7])
    labels = torch.tensor([0.0, 2.5, 1.0, 3.0, 5.0, 1.2, 1.1])
    scores = task_metrics(1, prefix="val/")(preds, labels)
    assert set(scores) == {"val/pearson", "val/spearman"}
    assert float(scores["val/pearson"]) == pytest.approx(pearsonr(preds, labels).statistic, abs=1e-5)
    assert float(scores["val/spearman"]) == pytest.approx(spearmanr(preds, labels).statistic, abs=1e-5)


def test_mcc_matches_the_confusion_matrix_formula():
    labels = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
    preds = torch.tensor([1, 1, 1, 0, 0, 1, 0, 0])  # TP 3, FN 2, FP 1, TN 2
    tp, tn, fp, fn = 3, 2, 1, 2
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    scores = task_metrics(2, prefix="val/")(preds, labels)
    assert float(scores["val/mcc"]) == pytest.approx(expected, abs=1e-6)
    assert float(scores["val/acc"]) == pytest.approx(5 / 8)


def test_regression_predictions_are_the_single_output_and_the_loss_is_mse(glue_dirs, compose_run, tmp_path):
    cfg = compose_run(
        "task=stsb", "task.source=embedded", f"task.data_dir={glue_dirs / 'STS-B'}", "baseline=full_ft", "logger=none"
    )
    s = resolve_settings(cfg)
    data = build_datamodule(s, s.backbone.tokenizer())
    adapted, _ = build_classifier(s, cfg, data, tmp_path)
    module = SequenceClassifier(adapted.model, s.task.num_labels, s.baseline.lr, s.weight_decay, s.warmup_ratio)
    batch = next(iter(data.val_dataloader()))
    assert batch["labels"].dtype == torch.float32
    out = module.model(**batch)
    assert out.logits.shape == (len(batch["labels"]), 1)
    predictions = module.predictions_of(out.logits)
    assert predictions.shape == batch["labels"].shape
    assert out.loss.item() == pytest.approx(torch.nn.functional.mse_loss(predictions, batch["labels"]).item(), rel=1e-5)


@pytest.fixture(scope="module")
def runs(glue_dirs, tmp_path_factory, store_template):
    """Tiny-model runs: STS-B full_ft and lora (seed 0) in sweep g1, CoLA lora (seed 0)."""
    root = tmp_path_factory.mktemp("store")
    uri = copy_store(store_template, root / "mlflow.db")
    results = {}
    for name, data_dir, baseline in [("stsb", "STS-B", "full_ft"), ("stsb", "STS-B", "lora"), ("cola", "CoLA", "lora")]:
        cfg = compose_config(
            "run",
            [
                "model=tiny",
                "trainer=debug",
                f"logger.tracking_uri={uri}",
                f"task={name}",
                "task.source=embedded",
                f"task.data_dir={glue_dirs / data_dir}",
                f"baseline={baseline}",
            ],
        )
        results[(name, baseline)] = run_experiment(cfg, root / f"{name}-{baseline}", sweep="g1")
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    logged = {(r.data.tags["task"], r.data.tags["baseline"]): r for r in client.search_runs(experiments)}
    return uri, results, logged


def test_stsb_run_logs_pearson_and_spearman_and_returns_its_headline(runs):
    _, results, logged = runs
    run = logged[("stsb", "lora")]
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert {"val/pearson", "val/spearman"} <= set(metrics) and not {"val/acc", "val/f1", "val/mcc"} & set(metrics)
    assert all(-1 <= metrics[m] <= 1 for m in ("val/pearson", "val/spearman"))
    assert results[("stsb", "lora")] == metrics["val/pearson"]


def test_cola_run_logs_mcc_as_its_headline(runs):
    _, results, logged = runs
    metrics = logged[("cola", "lora")].data.metrics
    assert {"val/mcc", "val/acc", "val/f1"} <= set(metrics) and "val/pearson" not in metrics
    assert results[("cola", "lora")] == metrics["val/mcc"]


def test_report_follows_a_headline_other_than_acc(runs, tmp_path):
    uri, _, logged = runs
    files = make_report(compose_config("report", [f"tracking_uri={uri}", "task_name=stsb", f"out_dir={tmp_path}"]))
    table = pd.read_csv(files.csv).set_index("baseline")
    assert list(table["headline"]) == ["val/pearson", "val/pearson"]
    pearson = {b: logged[("stsb", b)].data.metrics["test/pearson"] for b in ("full_ft", "lora")}
    assert table.loc["lora", "headline_mean"] == pytest.approx(pearson["lora"])
    assert table.loc["lora", "headline_ratio"] == pytest.approx(pearson["lora"] / pearson["full_ft"])
    expected = "met" if pearson["lora"] / pearson["full_ft"] >= 0.95 else "not met"
    assert table.loc["lora", "headline >= 95% of full_ft"] == expected
    assert table["acc_mean"].isna().all()
    text = files.markdown.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| task"))
    columns = [cell.strip() for cell in header.split("|")]
    assert {"headline", "Pearson", "Spearman", "headline / ref"} <= set(columns) and "acc" not in columns
    assert "| pearson " in text  # the headline column names it


def test_the_mean_pooling_head_regresses_with_mse_when_there_is_one_label():
    from transformers import BertConfig, BertModel

    from layerlens.models.heads import MeanPoolingClassifier

    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50),
        add_pooling_layer=False,
    )
    model = MeanPoolingClassifier(encoder, num_labels=1).eval()
    ids, mask, scores = (
        torch.tensor([[1, 2, 3], [4, 5, 0]]),
        torch.tensor([[1, 1, 1], [1, 1, 0]]),
        torch.tensor([0.5, 4.0]),
    )
    out = model(input_ids=ids, attention_mask=mask, labels=scores)
    assert out.logits.shape == (2, 1)
    assert torch.allclose(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), scores))
