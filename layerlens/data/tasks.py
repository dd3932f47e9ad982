from dataclasses import dataclass, field
from pathlib import Path

from layerlens.errors import LayerLensError
from layerlens.paths import EMBEDDED_GLUE_DIR
from layerlens.validation import require_choice, require_int

SOURCES = ("embedded", "hub")
HEADLINE_METRICS = ("val/acc", "val/f1")  # what the classifier logs on the eval split


@dataclass
class TaskSpec:
    """A GLUE-format classification task: where its splits live and how to read them."""

    name: str
    glue_dir: str  # folder name of the task in the GLUE distribution, e.g. "MRPC"
    text_columns: list[str]
    label_column: str
    num_labels: int = 2
    # Class names, indexed by class id, that a TSV may hold instead of the ids.
    label_names: list[str] | None = None
    max_length: int = 128
    source: str = "embedded"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "dev"
    hub_path: str = "nyu-mll/glue"
    hub_name: str | None = None
    hub_text_columns: list[str] = field(default_factory=lambda: ["sentence1", "sentence2"])
    hub_label_column: str = "label"
    headline_metric: str = "val/acc"

    def __post_init__(self):
        if self.source not in SOURCES:
            raise LayerLensError(f"task.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "hub" and self.data_dir is not None:
            raise LayerLensError("task.data_dir and task.source=hub exclude each other: set only one")
        if not 1 <= len(self.text_columns) <= 2:
            raise LayerLensError(f"task.text_columns must name 1 or 2 columns, got {list(self.text_columns)}")
        require_int("task.num_labels", self.num_labels, 2)
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            raise LayerLensError(
                f"task.label_names has {len(self.label_names)} names but task.num_labels is {self.num_labels}"
            )
        require_int("task.max_length", self.max_length, 2)
        require_choice("task.headline_metric", self.headline_metric, HEADLINE_METRICS)
        for name in ("train_split", "eval_split", "label_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise LayerLensError(f"task.{name} must be a non-empty name, got {getattr(self, name)!r}")

    def split_file(self, split: str) -> Path:
        base = Path(self.data_dir).expanduser() if self.data_dir is not None else EMBEDDED_GLUE_DIR / self.glue_dir
        return base / f"{split}.tsv"
