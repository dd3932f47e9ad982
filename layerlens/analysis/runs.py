"""Finished LayerLens runs read back from an MLflow store or a JSONL log (`logger=jsonl`), one row per run.

Both sources give the same frame: run_id, run_name, start_time, the identity tags, the task's headline metric, the
run's config (flattened, `task.max_length`: value as text, as MLflow logs params) and one column per metric.
"""

import json
import math
from pathlib import Path

import pandas as pd

from layerlens.errors import LayerLensError

IDENTITY_TAGS = ("task", "model", "baseline", "seed", "sweep")
# Logged params that do not change what a run computes, so runs differing only in them are the same variant.
NOT_CONFIG = (
    "seed",
    "logger.",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.eval_batch_size",
    "resume",  # and resume_sweep: how a run was started
    # Where the measured time model keeps its calibration: a cache's place. What it holds depends on the machine, as
    # every timing does; the plan it gives is logged (plan/*).
    "baseline.planner.calibration_dir",
)
COLUMNS = ["run_id", "run_name", "start_time", *IDENTITY_TAGS, "headline", "config"]
JSONL_SUFFIX = ".jsonl"


def is_jsonl(source: str) -> bool:
    """A source ending in .jsonl is a JSONL log; anything else is an MLflow tracking URI."""
    return str(source).endswith(JSONL_SUFFIX)


def describe_source(source: str) -> str:
    return f"JSONL log {source}" if is_jsonl(source) else f"MLflow store {source}"


def finished_runs(source: str, sweep: str | list[str] | None = None, task: str | None = None) -> pd.DataFrame:
    """Every FINISHED run that LayerLens tagged, of one sweep or several; `sweep="latest"` picks the newest."""
    rows = jsonl_rows(Path(source).expanduser()) if is_jsonl(source) else mlflow_rows(source)
    # In the order they started (a JSONL log: ended), whatever order the source listed them in.
    runs = pd.DataFrame(rows).sort_values("start_time", kind="stable") if rows else pd.DataFrame(columns=COLUMNS)
    if task:
        runs = runs[runs["task"] == task]
    if sweep == "latest":
        swept = runs.dropna(subset=["sweep"])
        sweep = swept.sort_values("start_time")["sweep"].iloc[-1] if len(swept) else None
        if sweep is None:
            return runs.iloc[0:0]
    if sweep:
        runs = runs[runs["sweep"].isin([sweep] if isinstance(sweep, str) else list(sweep))]
    return runs.reset_index(drop=True)


def run_config(params: dict) -> dict:
    return {k: v for k, v in params.items() if not k.startswith(NOT_CONFIG)}


def mlflow_rows(tracking_uri: str) -> list[dict]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    query = "attributes.status = 'FINISHED' and tags.baseline LIKE '%'"
    rows, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token)
        rows += [
            {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "start_time": run.info.start_time,
                **{tag: run.data.tags.get(tag) for tag in IDENTITY_TAGS},
                "headline": run.data.params.get("task.headline_metric"),
                "config": run_config(run.data.params),
                **run.data.metrics,
            }
            for run in page
        ]
        token = page.token
        if not token:
            break
    return rows


def jsonl_rows(path: Path) -> list[dict]:
    """The FINISHED lines of a JSONL log, in the file's order. A line that is not a run's JSON object is refused,
    naming the file, the line and the field."""
    if not path.is_file():
        raise LayerLensError(f"source: no JSONL log at {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"source: {path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LayerLensError(f"{where} is not JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(record, dict):
            raise LayerLensError(f"{where} is not a JSON object, got {type(record).__name__}")
        for field, kind in (("status", str), ("tags", dict), ("metrics", dict), ("config", dict)):
            if not isinstance(record.get(field), kind):
                raise LayerLensError(
                    f"{where}: {field} must be a JSON {'string' if kind is str else 'object'}, "
                    f"got {record.get(field)!r:.60}"
                )
        tags, metrics = record["tags"], record["metrics"]
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LayerLensError(f"{where}: metrics.{name} must be a number, got {value!r:.60}")
        if record["status"] != "FINISHED" or "baseline" not in tags:
            continue
        config = pd.json_normalize(record["config"], sep=".").iloc[0].to_dict() if record["config"] else {}
        config = {key: str(value) for key, value in config.items()}
        identity = {tag: tags.get(tag) for tag in IDENTITY_TAGS}
        identity["task"] = identity["task"] or config.get("task.name")
        identity["model"] = identity["model"] or config.get("model.name")
        end_time = record.get("end_time")
        rows.append(
            {
                "run_id": f"{path.name}:{number}",
                "run_name": record.get("run_name") or f"{tags['baseline']}-{identity['task']}-s{tags.get('seed')}",
                # A JSONL line keeps only when the run ended: runs are ordered by that (or by line, without it).
                "start_time": end_time * 1000
                if isinstance(end_time, (int, float)) and math.isfinite(end_time)
                else number,
                **identity,
                "headline": config.get("task.headline_metric"),
                "config": run_config(config),
                **{name: float(value) for name, value in metrics.items()},
            }
        )
    return rows
