from layerlens.tracking.mlflow_tracker import MlflowTracker
from layerlens.tracking.null_tracker import NullTracker

__all__ = ["MlflowTracker", "NullTracker"]
