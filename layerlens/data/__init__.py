from layerlens.data.datamodule import GlueDataModule
from layerlens.data.glue_files import load_task_splits, read_glue_tsv
from layerlens.data.tasks import TaskSpec

__all__ = ["GlueDataModule", "TaskSpec", "load_task_splits", "read_glue_tsv"]
