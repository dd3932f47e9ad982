from layerlens.data.datamodule import GlueDataModule
from layerlens.data.glue_files import load_task_splits, read_glue_tsv
from layerlens.data.selection import SELECTION, TEST, TRAIN, protocol_splits
from layerlens.data.sft import SftTaskSpec
from layerlens.data.tasks import TaskSpec

__all__ = [
    "SELECTION",
    "TEST",
    "TRAIN",
    "GlueDataModule",
    "SftTaskSpec",
    "TaskSpec",
    "load_task_splits",
    "protocol_splits",
    "read_glue_tsv",
]
