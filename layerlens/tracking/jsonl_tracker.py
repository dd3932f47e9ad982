import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from layerlens.errors import LayerLensError


class JsonlRun:
    run_id = None

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.update({k: float(v) for k, v in metrics.items()})

    def set_tags(self, tags):
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path):
        pass

    def lightning_logger(self):
        return False


class JsonlTracker:
    """`logger=jsonl`: each run appends one JSON line to `path` when it ends (name, status, tags, resolved config,
    last value of every metric), for machines without an MLflow store. Per-epoch curves and artifacts are not kept."""

    def __init__(self, path: str):
        if not isinstance(path, str) or not path.strip():
            raise LayerLensError(f"logger.path must be a non-empty string, got {path!r}")
        self.path = Path(path).expanduser()

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str], config: DictConfig, run_id: str | None = None):
        run = JsonlRun()
        run.set_tags(tags)
        status, error = "FAILED", None
        try:
            yield run
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException as err:
            error = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise
        finally:
            record = {
                "run_name": run_name,
                "status": status,
                "error": error,
                "end_time": time.time(),
                "tags": run.tags,
                "metrics": run.metrics,
                "config": OmegaConf.to_container(config, resolve=True),
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write() of one line on an O_APPEND file: parallel runs appending to the same file don't interleave.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
            finally:
                os.close(fd)
