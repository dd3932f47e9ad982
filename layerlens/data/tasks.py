from dataclasses import dataclass, field
from pathlib import Path

from layerlens.data.kinds import metric_names, task_kind
from layerlens.errors import LayerLensError
from layerlens.paths import EMBEDDED_GLUE_DIR
from layerlens.validation import require_choice, require_int

SOURCES = ("embedded", "hub")
DEFAULT_HEADLINE = "val/acc"


@dataclass
class TaskSpec:
    """A GLUE-format task (classification, or regression when num_labels is 1): where its splits live and
    how to read them."""

    name: str
    glue_dir: str  # folder name of the task in the GLUE distribution, e.g. "MRPC"
    text_columns: list[str]
    label_column: str
    num_labels: int = 2  # 1: one score per example (regression, e.g. STS-B)
    # Class names, indexed by class id, that a TSV may hold instead of the ids.
    label_names: list[str] | None = None
    # None: a TSV's first line names its columns. A list: the TSVs have no header row (GLUE's CoLA) and
    # these name their columns, in order.
    column_names: list[str] | None = None
    max_length: int = 128
    source: str = "embedded"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "dev"
    hub_path: str = "nyu-mll/glue"
    hub_name: str | None = None
    hub_text_columns: list[str] = field(default_factory=lambda: ["sentence1", "sentence2"])
    hub_label_column: str = "label"
    headline_metric: str = DEFAULT_HEADLINE

    def __post_init__(self):
        if self.source not in SOURCES:
            raise LayerLensError(f"task.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "hub" and self.data_dir is not None:
            raise LayerLensError("task.data_dir and task.source=hub exclude each other: set only one "
                                 "(task.source=embedded reads task.data_dir)")
        if self.source == "embedded" and self.data_dir is None and not (EMBEDDED_GLUE_DIR / self.glue_dir).is_dir():
            raise LayerLensError(f"task.data_dir: LayerLens ships no copy of {self.glue_dir}: set task.data_dir to a "
                                 f"folder with its GLUE-format TSVs, or task.source=hub")
        if not 1 <= len(self.text_columns) <= 2:
            raise LayerLensError(f"task.text_columns must name 1 or 2 columns, got {list(self.text_columns)}")
        require_int("task.num_labels", self.num_labels, 1)
        if self.label_names is not None and self.kind == "regression":
            raise LayerLensError(
                f"task.label_names must be null for a regression task (num_labels 1), got {self.label_names}"
            )
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            raise LayerLensError(
                f"task.label_names has {len(self.label_names)} names but task.num_labels is {self.num_labels}"
            )
        require_int("task.max_length", self.max_length, 2)
        require_choice("task.headline_metric", self.headline_metric, self.metric_names)
        for name in ("train_split", "eval_split", "label_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise LayerLensError(f"task.{name} must be a non-empty name, got {getattr(self, name)!r}")
        if self.column_names is not None:
            self._check_column_names()

    def _check_column_names(self) -> None:
        names = self.column_names
        if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
                or len(set(names)) != len(names)):
            raise LayerLensError(f"task.column_names must be a list of distinct non-empty names, got {names}")
        missing = [c for c in [*self.text_columns, self.label_column] if c not in names]
        if missing:
            raise LayerLensError(f"task.column_names must include {', '.join(map(repr, missing))} (named by "
                                 f"task.text_columns or task.label_column), got {names}")

    @property
    def kind(self) -> str:
        return task_kind(self.num_labels)

    @property
    def metric_names(self) -> list[str]:
        return metric_names(self.num_labels)

    def split_file(self, split: str) -> Path:
        base = Path(self.data_dir).expanduser() if self.data_dir is not None else EMBEDDED_GLUE_DIR / self.glue_dir
        return base / f"{split}.tsv"
