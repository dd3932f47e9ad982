from layerlens.tracking.jsonl_tracker import JsonlTracker
from layerlens.tracking.null_tracker import NullTracker

__all__ = ["JsonlTracker", "MlflowTracker", "NullTracker"]


def __getattr__(name: str):
    # MLflow is imported only by a run that records to it: the pipeline runs without it (logger=none, logger=jsonl).
    if name == "MlflowTracker":
        from layerlens.tracking.mlflow_tracker import MlflowTracker

        return MlflowTracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
