from collections import Counter

import datasets
import pytest

from layerlens.data import (
    SELECTION,
    TEST,
    TRAIN,
    GlueDataModule,
    TaskSpec,
    load_task_splits,
    protocol_splits,
    read_glue_tsv,
)
from layerlens.data.selection import holdout_rows
from layerlens.errors import LayerLensError
from layerlens.models import RandomBertBackbone
from layerlens.settings import instantiate_node
from tests.conftest import compose_config


def task(name: str, **overrides) -> TaskSpec:
    words = [f"task={name}", *(f"task.{k}={v}" for k, v in overrides.items())]
    return instantiate_node(compose_config("run", words), "task")


@pytest.mark.parametrize(
    "name,sizes,train_labels",
    [("mrpc", (3668, 408), {1: 2474, 0: 1194}), ("rte", (2490, 277), {0: 1249, 1: 1241})],
)
def test_shipped_splits_load_with_their_documented_sizes(name, sizes, train_labels):
    splits = load_task_splits(task(name))
    assert (len(splits["train"]), len(splits["dev"])) == sizes
    assert Counter(splits["train"]["label"]) == train_labels
    assert splits["train"].column_names == ["text_a", "text_b", "label"]


def test_mrpc_byte_order_mark_and_unbalanced_quotes_are_read_as_written():
    mrpc = task("mrpc")
    rows = read_glue_tsv(mrpc.split_file("train"), mrpc)
    # A sentence with an unbalanced double quote stays one field (quoting is off).
    assert any(text.count('"') % 2 == 1 for text in [*rows["text_a"], *rows["text_b"]])
    assert rows[0]["text_a"].startswith("Amrozi accused his brother")


def write_tsv(path, header, rows, bom=False):
    text = "\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


def test_user_data_dir_is_read(tmp_path):
    rows = [["1", "1", "2", "A cat sat.", "A cat was sitting."], ["0", "3", "4", "Rain.", "Sun."]]
    write_tsv(tmp_path / "train.tsv", MRPC_HEADER, rows, bom=True)
    write_tsv(tmp_path / "dev.tsv", MRPC_HEADER, rows[:1])
    splits = load_task_splits(task("mrpc", data_dir=tmp_path))
    assert splits["train"]["label"] == [1, 0] and splits["dev"]["text_b"] == ["A cat was sitting."]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(LayerLensError, match=r"train\.tsv: task file not found"):
        load_task_splits(task("mrpc", data_dir=tmp_path))


def test_wrong_columns_name_the_missing_column(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", ["label", "sentence"], [["1", "hello"]])
    with pytest.raises(
        LayerLensError,
        match=r"x\.tsv: missing column\(s\) '#1 String', '#2 String', 'Quality' for task mrpc \(found: 'label', 'sentence'\)",
    ):
        read_glue_tsv(path, task("mrpc"))


@pytest.mark.parametrize("bad", ["abc", "1.5", "2", "-1", "", "²"])
def test_non_integer_or_out_of_range_label_names_file_line_and_value(tmp_path, bad):
    rows = [["1", "1", "2", "a", "b"], [bad, "3", "4", "c", "d"]]
    path = write_tsv(tmp_path / "x.tsv", MRPC_HEADER, rows)
    with pytest.raises(LayerLensError, match=rf"x\.tsv:3: label column 'Quality' holds '{bad}'"):
        read_glue_tsv(path, task("mrpc"))


def test_truncated_line_names_file_line_and_field(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("\t".join(MRPC_HEADER) + "\n1\t1\t2\ta\tb\n0\t3\t4\tc\n", encoding="utf-8")
    with pytest.raises(
        LayerLensError, match=r"x\.tsv:3: 4 fields where the header has 5 \(a truncated line or a stray tab\?\)"
    ):
        read_glue_tsv(path, task("mrpc"))


def test_an_empty_line_among_the_rows_is_refused_and_trailing_ones_are_not(tmp_path):
    """pandas skips empty lines: one between rows (a row truncated to nothing) would vanish without a word."""
    path = tmp_path / "x.tsv"
    path.write_text("\t".join(MRPC_HEADER) + "\n1\t1\t2\ta\tb\n\n0\t3\t4\tc\td\n", encoding="utf-8")
    with pytest.raises(LayerLensError, match=r"x\.tsv:3: an empty line among the rows \(a truncated row\?\)"):
        read_glue_tsv(path, task("mrpc"))
    path.write_text("\t".join(MRPC_HEADER) + "\n1\t1\t2\ta\tb\n0\t3\t4\tc\td\n\n\n", encoding="utf-8")
    assert read_glue_tsv(path, task("mrpc"))["label"] == [1, 0]


def test_named_labels_map_to_class_ids_and_unknown_names_fail(tmp_path):
    header = ["sentence1", "sentence2", "label", "idx"]
    good = write_tsv(
        tmp_path / "good.tsv",
        header,
        [["a", "b", "not_entailment", "0"], ["c", "d", "entailment", "1"], ["e", "f", "0", "2"]],
    )
    assert read_glue_tsv(good, task("rte"))["label"] == [1, 0, 0]
    bad = write_tsv(tmp_path / "bad.tsv", header, [["a", "b", "maybe", "0"]])
    with pytest.raises(LayerLensError, match="expected one of: entailment, not_entailment, integers 0..1"):
        read_glue_tsv(bad, task("rte"))


def test_hub_source_maps_hub_columns_and_validation_split(monkeypatch):
    hub = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1], "idx": [0, 1]}
            )
            for split in ("train", "validation", "test")
        }
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name: calls.append((path, name)) or hub)
    splits = load_task_splits(task("mrpc", source="hub"))
    assert calls == [("nyu-mll/glue", "mrpc")]
    assert splits["dev"]["label"] == [0, 1] and splits["train"]["text_b"] == ["c", "d"]


def test_hub_source_and_data_dir_exclude_each_other(tmp_path):
    with pytest.raises(LayerLensError, match="task.data_dir and task.source=hub"):
        task("mrpc", source="hub", data_dir=tmp_path)


def test_batches_are_padded_to_their_longest_row_only():
    mrpc = task("mrpc", max_length=128)
    splits = load_task_splits(mrpc)
    splits = datasets.DatasetDict({TRAIN: splits["train"].select(range(16)), TEST: splits["dev"].select(range(16))})
    tokenizer = RandomBertBackbone("tiny").tokenizer()
    data = GlueDataModule(splits, tokenizer, 128, batch_size=4, eval_batch_size=4)
    lengths = [batch["input_ids"].shape[1] for batch in data.test_dataloader()]
    assert max(lengths) <= 128 and len(set(lengths)) > 1
    batch = next(iter(data.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"} and batch["labels"].shape == (4,)


def test_the_holdout_is_a_fixed_stratified_share_of_train_and_the_test_split_is_dev_untouched():
    mrpc = task("mrpc")
    named = load_task_splits(mrpc)
    roles = protocol_splits(mrpc, named)
    assert set(roles) == {TRAIN, SELECTION, TEST}
    assert roles[TEST]["text_a"] == named["dev"]["text_a"]
    assert len(roles[TRAIN]) + len(roles[SELECTION]) == len(named["train"])
    pairs = lambda split: Counter(zip(split["text_a"], split["text_b"], split["label"]))
    assert pairs(roles[TRAIN]) + pairs(roles[SELECTION]) == pairs(named["train"])  # disjoint, nothing lost
    # Each class keeps its share: MRPC's train split has 2474 positives and 1194 negatives.
    assert Counter(roles[SELECTION]["label"]) == {1: round(0.1 * 2474), 0: round(0.1 * 1194)}
    # The rows depend on task.selection_seed alone, not on the run's seed or anything else.
    again = protocol_splits(task("mrpc"), load_task_splits(task("mrpc")))
    assert again[SELECTION]["text_a"] == roles[SELECTION]["text_a"]
    other = protocol_splits(task("mrpc", selection_seed=1), named)
    assert other[SELECTION]["text_a"] != roles[SELECTION]["text_a"]


def test_holdout_rows_keep_a_row_of_each_class_in_train_and_stratify_only_classes():
    labels = [0] * 9 + [1] * 3 + [2]
    held = holdout_rows(labels, 0.34, seed=0, stratified=True)
    assert Counter(labels[i] for i in held) == {0: 3, 1: 1}  # a class of one row stays in train
    assert len(holdout_rows([0.5, 1.5, 2.5, 3.5], 0.5, seed=0, stratified=False)) == 2
    assert len(holdout_rows([0, 0], 0.9, seed=0, stratified=True)) == 1


def test_selection_none_and_a_named_selection_file(tmp_path):
    rows = [["1", "1", "2", "A cat sat.", "A cat was sitting."], ["0", "3", "4", "Rain.", "Sun."]]
    for name in ("train", "dev", "pick"):
        write_tsv(tmp_path / f"{name}.tsv", MRPC_HEADER, rows)
    none = task("mrpc", data_dir=tmp_path, selection_split="none")
    assert set(protocol_splits(none, load_task_splits(none))) == {TRAIN, TEST}
    named = task("mrpc", data_dir=tmp_path, selection_split="pick")
    roles = protocol_splits(named, load_task_splits(named))
    assert len(roles[SELECTION]) == 2 and len(roles[TRAIN]) == 2


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"selection_split": "dev"}, r"task.selection_split must differ from the train and test splits"),
        ({"selection_split": "train"}, r"task.selection_split must differ"),
        ({"selection_fraction": 1.0}, r"task.selection_fraction must be in \(0, 1\)"),
        ({"test_split": "train"}, r"task.test_split must differ from task.train_split"),
    ],
)
def test_a_selection_that_would_touch_another_split_is_refused(overrides, match):
    with pytest.raises(LayerLensError, match=match):
        task("mrpc", **overrides)
