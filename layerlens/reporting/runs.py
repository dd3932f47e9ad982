"""Finished LayerLens runs read back from an MLflow store, one row per run."""

import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

IDENTITY_TAGS = ("task", "model", "baseline", "seed", "sweep")
# Logged params that do not change what a run computes, so runs differing only in them are the same variant.
NOT_CONFIG = ("seed", "logger.", "trainer.enable_progress_bar", "trainer.enable_model_summary",
              "trainer.log_every_n_steps", "data.num_workers", "data.eval_batch_size")


def finished_runs(tracking_uri: str, sweep: str | list[str] | None = None, task: str | None = None) -> pd.DataFrame:
    """Every FINISHED run that LayerLens tagged, of one sweep or several; `sweep="latest"` picks the newest."""
    client = MlflowClient(tracking_uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    query = "attributes.status = 'FINISHED' and tags.baseline LIKE '%'"
    if task:
        query += f" and tags.task = '{task}'"
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
                "config": {k: v for k, v in run.data.params.items() if not k.startswith(NOT_CONFIG)},
                **run.data.metrics,
            }
            for run in page
        ]
        token = page.token
        if not token:
            break
    runs = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run_id", "run_name", "start_time", *IDENTITY_TAGS, "headline", "config"])
    if sweep == "latest":
        swept = runs.dropna(subset=["sweep"])
        sweep = swept.sort_values("start_time")["sweep"].iloc[-1] if len(swept) else None
        if sweep is None:
            return runs.iloc[0:0]
    if sweep:
        runs = runs[runs["sweep"].isin([sweep] if isinstance(sweep, str) else list(sweep))]
    return runs.reset_index(drop=True)
