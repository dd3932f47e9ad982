"""Reading GLUE-format splits (the embedded TSVs, a user's TSVs, or the hub) into `datasets`."""

import csv
import math
from pathlib import Path

import datasets

from layerlens.data.tasks import TaskSpec
from layerlens.errors import LayerLensError

TEXT_A, TEXT_B, LABEL = "text_a", "text_b", "label"
HUB_SPLITS = {"dev": "validation"}


def read_glue_tsv(path: str | Path, task: TaskSpec) -> datasets.Dataset:
    """One GLUE TSV (tab-separated, quoting off, BOM or not, a header row unless task.column_names names the
    columns) as columns text_a[, text_b], label."""
    path = Path(path)
    if not path.is_file():
        raise LayerLensError(f"{path}: task file not found")
    try:
        columns, rows = _checked_columns(path, task.column_names)
        headerless = {"column_names": columns, "header": None} if task.column_names else {}
        raw = datasets.load_dataset(
            "csv",
            data_files=str(path),
            split="train",
            delimiter="\t",
            quoting=csv.QUOTE_NONE,
            encoding="utf-8-sig",
            keep_default_na=False,
            # Every column as text, so a label is judged as written ("1.5" is not 1).
            features=datasets.Features({name: datasets.Value("string") for name in columns}),
            **headerless,
        )
    except LayerLensError:
        raise
    except Exception as err:  # decoding, pandas and pyarrow raise many types for a malformed file
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LayerLensError(f"{path}: not a readable tab-separated GLUE file ({detail})") from None
    if len(raw) != rows:  # a safety net: pandas must see the lines counted above, no more, no fewer
        raise LayerLensError(f"{path}: {len(raw)} rows parsed where the file has {rows} lines of rows")
    wanted = [*task.text_columns, task.label_column]
    missing = [c for c in wanted if c not in raw.column_names]
    if missing:
        raise LayerLensError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} for task {task.name} "
            f"(found: {', '.join(map(repr, raw.column_names))})"
        )
    first_line = 1 if task.column_names else 2
    read_label = LABEL_READERS[task.kind]
    labels = [read_label(value, task, path, line=first_line + i) for i, value in enumerate(raw[task.label_column][:])]
    return _normalised(raw, task.text_columns, labels)


def _checked_columns(path: Path, column_names: list[str] | None) -> tuple[list[str], int]:
    """The column names (the header's, or `column_names` for a file without one) and the number of
    (non-empty) rows, once every row is seen to have as many fields (quoting is off, so a tab is always
    a separator)."""
    # Split on newlines only, as pandas does: str.splitlines would also break inside a sentence at \x85 or \u2028.
    lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
    if not any(lines):
        raise LayerLensError(f"{path}: the file is empty")
    first = 0 if column_names else 1  # index of the first row
    if not any(lines[first:]):
        raise LayerLensError(f"{path}: no rows below the header")
    if column_names:
        columns, source = list(column_names), "task.column_names"
    else:
        columns, source = lines[0].split("\t"), "the header"
    last = max((i for i, line in enumerate(lines) if line), default=0)
    for number, line in enumerate(lines[first : last + 1], start=first + 1):
        if not line:  # pandas would skip it: a row lost without a word
            raise LayerLensError(f"{path}:{number}: an empty line among the rows (a truncated row?)")
        fields = line.count("\t") + 1
        if fields != len(columns):
            raise LayerLensError(
                f"{path}:{number}: {fields} fields where {source} has {len(columns)} (a truncated line or a stray tab?)"
            )
    return columns, last + 1 - first  # lines first..last are the rows: none of them is empty


def _class_id(value: str, task: TaskSpec, path: Path, line: int) -> int:
    """A label as written: a class id, or (for tasks with label_names) the class's name."""
    value = value.strip()
    names = task.label_names or []
    if value in names:
        return names.index(value)
    if value.isascii() and value.isdigit() and int(value) < task.num_labels:
        return int(value)
    allowed = ", ".join([*names, f"integers 0..{task.num_labels - 1}"])
    raise LayerLensError(
        f"{path}:{line}: label column {task.label_column!r} holds {value!r}, expected one of: {allowed}"
    )


def _score(value: str, task: TaskSpec, path: Path, line: int) -> float:
    """A regression label: a finite number as written (STS-B's 0-5 similarity, e.g. 3.8)."""
    try:
        score = float(value.strip())
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise LayerLensError(
            f"{path}:{line}: label column {task.label_column!r} holds {value!r}, expected a finite number"
        )
    return score


LABEL_READERS = {"classification": _class_id, "regression": _score}


def _normalised(raw: datasets.Dataset, text_columns, labels: list) -> datasets.Dataset:
    # raw[name] is a lazy Column, which iteration reads a row at a time; [:] reads it whole, as a list.
    columns = {TEXT_A: raw[text_columns[0]][:]}
    if len(text_columns) == 2:
        columns[TEXT_B] = raw[text_columns[1]][:]
    columns[LABEL] = labels
    return datasets.Dataset.from_dict(columns)


def load_task_splits(task: TaskSpec) -> datasets.DatasetDict:
    """The task's named splits (train, test, and a selection split of its own if it has one), by name, from the
    hub or from GLUE TSV files."""
    splits = task.named_splits
    if task.source == "hub":
        hub = datasets.load_dataset(task.hub_path, task.hub_name)
        parts = {split: hub[HUB_SPLITS.get(split, split)] for split in splits}
        return datasets.DatasetDict(
            {s: _normalised(d, task.hub_text_columns, d[task.hub_label_column][:]) for s, d in parts.items()}
        )
    return datasets.DatasetDict({split: read_glue_tsv(task.split_file(split), task) for split in splits})
