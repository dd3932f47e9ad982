"""Predictions of an exported model for every row of a TSV or JSONL file (python -m layerlens.predict), written
as they are made: one JSON line per row, in the file's order, flushed batch by batch."""

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from layerlens.errors import LayerLensError
from layerlens.loading import Exported, load_export
from layerlens.validation import require_int

Row = tuple[int, list[str]]  # the line number in the file, the row's texts (the task's text columns)


def data_lines(path: Path) -> list[tuple[int, str]]:
    """The file's lines with their numbers, those after the last non-empty one left out."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise LayerLensError(f"{path}: not UTF-8 text ({err.reason})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return list(enumerate(lines, start=1))


def tsv_rows(path: Path, lines: list[tuple[int, str]], task: dict) -> Iterator[Row]:
    """The texts of each row of a TSV whose columns a header row names (or the task's column_names, without one);
    the header is checked at once, each row as it is read."""
    named = task["column_names"]
    if named is None:
        if not lines:
            raise LayerLensError(f"{path}: the file is empty (a TSV needs a header row naming its columns)")
        (_, header), lines = lines[0], lines[1:]
        columns, source = header.split("\t"), "the header"
    else:
        columns, source = named, "the task's column_names"
    missing = [c for c in task["text_columns"] if c not in columns]
    if missing:
        raise LayerLensError(
            f"{path}: no column {', '.join(map(repr, missing))} in {source} (the model reads "
            f"{', '.join(map(repr, task['text_columns']))})"
        )
    positions = [columns.index(c) for c in task["text_columns"]]

    def rows() -> Iterator[Row]:
        for number, line in lines:
            fields = line.split("\t")
            if len(fields) != len(columns):
                raise LayerLensError(
                    f"{path}:{number}: {len(fields)} fields where {source} has {len(columns)} (a truncated line or "
                    "a stray tab?)"
                )
            yield number, [fields[i] for i in positions]

    return rows()


def jsonl_rows(path: Path, lines: list[tuple[int, str]], task: dict) -> Iterator[Row]:
    """The texts of each line of a JSONL file: an object with a string for each of the task's text columns."""
    for number, line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise LayerLensError(f"{path}:{number}: not a JSON object")
        for column in task["text_columns"]:
            if not isinstance(row.get(column), str):
                raise LayerLensError(
                    f"{path}:{number}: no text under {column!r} (the model reads {task['text_columns']})"
                )
        yield number, [row[c] for c in task["text_columns"]]


READERS = {".tsv": tsv_rows, ".jsonl": jsonl_rows}


def predictions(exported: Exported, batch: list[Row]) -> list[dict]:
    """One prediction per row: the label and each label's probability, or the score of a regression."""
    task = exported.task
    texts = list(zip(*(texts for _, texts in batch)))
    encoded = exported.tokenizer(
        *texts, truncation=True, max_length=task["max_length"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = exported.model(**encoded).logits
    if task["kind"] == "regression":
        return [{"line": n, "score": float(score)} for (n, _), score in zip(batch, logits[:, 0])]
    labels = task["labels"]
    return [
        {
            "line": n,
            "label": labels[int(p.argmax())],
            "probabilities": {label: float(q) for label, q in zip(labels, p)},
        }
        for (n, _), p in zip(batch, logits.softmax(dim=-1))
    ]


def predict_file(model: str | Path, file: str | Path, out: str | Path, batch_size: int = 32) -> int:
    """Write the predictions of the export `model` for every row of `file` to `out` (JSON lines); returns the rows
    predicted. A malformed row stops it in one line naming the row's line number, after the rows above it are
    written."""
    require_int("batch_size", batch_size, 1)
    path = Path(file)
    if not path.is_file():
        raise LayerLensError(f"file: {path} not found")
    reader = READERS.get(path.suffix)
    if reader is None:
        raise LayerLensError(f"file: {path} must be a .tsv or a .jsonl file")
    if not Path(out).parent.is_dir():
        raise LayerLensError(f"out: no folder {Path(out).parent} to write {Path(out).name} in")
    lines = data_lines(path)
    exported = load_export(model)
    rows = reader(path, lines, exported.task)
    total = len(lines) - (path.suffix == ".tsv" and exported.task["column_names"] is None)
    written = 0
    with open(out, "w", encoding="utf-8") as sink, tqdm(total=max(total, 0), unit="row", desc="predict") as bar:

        def write(batch: list[Row]) -> None:
            nonlocal written
            for prediction in predictions(exported, batch):
                sink.write(json.dumps(prediction) + "\n")
            sink.flush()
            written += len(batch)
            bar.update(len(batch))

        batch: list[Row] = []
        try:
            for row in rows:
                batch.append(row)
                if len(batch) == batch_size:
                    write(batch)
                    batch = []
        except LayerLensError:
            if batch:  # the rows above the malformed one
                write(batch)
            raise
        if batch:
            write(batch)
    return written
