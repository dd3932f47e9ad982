from dataclasses import dataclass, field
from pathlib import Path

from layerlens.data.kinds import metric_names, task_kind
from layerlens.errors import LayerLensError
from layerlens.paths import EMBEDDED_GLUE_DIR
from layerlens.validation import require_choice, require_fraction, require_int

SOURCES = ("embedded", "hub")
DEFAULT_HEADLINE = "val/acc"
# task.selection_split: a share of the train split held out (the default), no selection at all (the checkpoint
# after the last epoch is tested), or else the name of a split of its own (a <name>.tsv beside train.tsv).
HOLDOUT, NO_SELECTION = "holdout", "none"


class SplitProtocol:
    """The roles of a task's splits, alike in every task kind: train fits, selection chooses the checkpoint, test is
    read once. A task's dataclass holds the fields named below."""

    train_split: str
    test_split: str
    selection_split: str  # HOLDOUT, NO_SELECTION, or the name of a split of its own
    selection_fraction: float
    selection_seed: int

    def check_protocol(self, *names: str) -> None:
        """Check the split settings, and that the fields `names` (besides the splits') are non-empty names."""
        for name in ("train_split", "test_split", "selection_split", *names):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise LayerLensError(f"task.{name} must be a non-empty name, got {getattr(self, name)!r}")
        if self.selection_split in (self.train_split, self.test_split):
            raise LayerLensError(
                f"task.selection_split must differ from the train and test splits (use "
                f"{HOLDOUT!r} to hold out part of {self.train_split!r}), got {self.selection_split!r}"
            )
        if self.train_split == self.test_split:
            raise LayerLensError(f"task.test_split must differ from task.train_split, got {self.test_split!r} for both")
        require_fraction("task.selection_fraction", self.selection_fraction, low_open=True)
        require_int("task.selection_seed", self.selection_seed, 0)

    @property
    def selects(self) -> bool:
        """Whether a selection split chooses the checkpoint (else the last epoch's is tested)."""
        return self.selection_split != NO_SELECTION

    @property
    def named_splits(self) -> list[str]:
        """The splits read from files or the hub: train, test, and a selection split that has a name of its own."""
        own = [] if self.selection_split in (HOLDOUT, NO_SELECTION) else [self.selection_split]
        return [self.train_split, self.test_split, *own]


@dataclass
class TaskSpec(SplitProtocol):
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
    # Read once, at the end, with the selected checkpoint only: never used to choose anything.
    test_split: str = "dev"
    # Chooses the checkpoint (and, in searches, the hyper-parameters): see HOLDOUT and NO_SELECTION above.
    selection_split: str = HOLDOUT
    selection_fraction: float = 0.1  # holdout: this share of each class of the train split
    selection_seed: int = 0  # holdout: the rows drawn, the same for every run seed and baseline
    hub_path: str = "nyu-mll/glue"
    hub_name: str | None = None
    hub_text_columns: list[str] = field(default_factory=lambda: ["sentence1", "sentence2"])
    hub_label_column: str = "label"
    headline_metric: str = DEFAULT_HEADLINE

    def __post_init__(self):
        if self.source not in SOURCES:
            raise LayerLensError(f"task.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "hub" and self.data_dir is not None:
            raise LayerLensError(
                "task.data_dir and task.source=hub exclude each other: set only one "
                "(task.source=embedded reads task.data_dir)"
            )
        if self.source == "embedded" and self.data_dir is None and not (EMBEDDED_GLUE_DIR / self.glue_dir).is_dir():
            raise LayerLensError(
                f"task.data_dir: LayerLens ships no copy of {self.glue_dir}: set task.data_dir to a "
                f"folder with its GLUE-format TSVs, or task.source=hub"
            )
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
        self.check_protocol("label_column")
        if self.column_names is not None:
            self._check_column_names()

    def _check_column_names(self) -> None:
        names = self.column_names
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)
        ):
            raise LayerLensError(f"task.column_names must be a list of distinct non-empty names, got {names}")
        missing = [c for c in [*self.text_columns, self.label_column] if c not in names]
        if missing:
            raise LayerLensError(
                f"task.column_names must include {', '.join(map(repr, missing))} (named by "
                f"task.text_columns or task.label_column), got {names}"
            )

    @property
    def kind(self) -> str:
        return task_kind(self.num_labels)

    @property
    def metric_names(self) -> list[str]:
        return metric_names(self.num_labels)

    headline_mode = "max"  # every classification and regression metric is the higher the better

    def metric_names_on(self, stage: str) -> list[str]:
        return metric_names(self.num_labels, stage)

    def split_file(self, split: str) -> Path:
        base = Path(self.data_dir).expanduser() if self.data_dir is not None else EMBEDDED_GLUE_DIR / self.glue_dir
        return base / f"{split}.tsv"
