import functools
import math
import random
import time
from contextlib import contextmanager, nullcontext
from typing import cast

from filelock import FileLock
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from layerlens.errors import LayerLensError

CONFIG_ARTIFACT = "config.yaml"
MAX_PARAM_CHARS = 6000
# How long a write may wait out other processes holding the SQLite file (parallel sweeps).
LOCKED_RETRY_SECONDS = 300.0
# An experiment's kind as MLflow keeps it, the tag that its UI's kind selector writes (mlflow/server/js): LayerLens's
# are model training, whose page is the runs table. MLflow 3.17's UI reads a switch of its own first (README, Browse).
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def _is_locked(err: BaseException | None) -> bool:
    for _ in range(5):  # MlflowException wraps sqlalchemy's OperationalError wrapping sqlite3's
        if err is None:
            return False
        if "database is locked" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def retry_when_locked(call):
    """Retry `call` with backoff while SQLite answers 'database is locked', for LOCKED_RETRY_SECONDS at most."""

    @functools.wraps(call)
    def wrapped(*args, **kwargs):
        deadline, delay = time.monotonic() + LOCKED_RETRY_SECONDS, 0.05
        while True:
            try:
                return call(*args, **kwargs)
            except Exception as err:
                if not _is_locked(err) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(2 * delay, 2.0)

    return wrapped


def _store_init_lock(tracking_uri: str | None):
    """An inter-process lock next to a SQLite store's file: MLflow creates and migrates a fresh store's
    tables without one, so two processes opening the same new file at once break each other's migration."""
    path = (tracking_uri or "").removeprefix("sqlite:///").split("?")[0]
    if not tracking_uri or not tracking_uri.startswith("sqlite:///") or path in ("", ":memory:"):
        return nullcontext()
    return FileLock(f"{path}.lock", timeout=LOCKED_RETRY_SECONDS)


class SharedStoreClient(MlflowClient):
    """An MlflowClient for many processes writing to one SQLite store, as a parallel sweep does: the store
    is opened (created, migrated) by one process at a time, and the calls below wait out SQLite's lock."""

    def __init__(self, tracking_uri: str | None = None, registry_uri: str | None = None):
        with _store_init_lock(tracking_uri):  # the store is built here and cached for the process
            super().__init__(tracking_uri, registry_uri)


for _name in (
    "get_experiment_by_name",
    "create_experiment",
    "create_run",
    "get_run",
    "search_runs",
    "update_run",
    "log_batch",
    "log_metric",
    "log_param",
    "set_tag",
    "set_experiment_tag",
    "delete_tag",
    "set_terminated",
    "log_text",
    "log_dict",
    "log_artifact",
):
    setattr(SharedStoreClient, _name, retry_when_locked(getattr(MlflowClient, _name)))


class _AttachedLogger(MLFlowLogger):
    """Lightning's MLflow logger writing into a run that the tracker opened and will close."""

    def __init__(self, tracking_uri: str, run_id: str):
        # Lightning's own client finds the store that the tracker's client opened (cached per process).
        super().__init__(tracking_uri=tracking_uri, run_id=run_id)
        self._mlflow_client = SharedStoreClient(tracking_uri)

    def finalize(self, status: str = "success") -> None:
        pass


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


class MlflowRun:
    def __init__(self, client: MlflowClient, tracking_uri: str, run_id: str):
        self.client, self.tracking_uri, self.run_id = client, tracking_uri, run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), timestamp, step or 0) for k, v in metrics.items() if math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def lightning_logger(self) -> MLFlowLogger:
        return _AttachedLogger(tracking_uri=self.tracking_uri, run_id=self.run_id)


class MlflowTracker:
    """Opens one MLflow run per experiment and closes it FINISHED, FAILED or KILLED."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        for name, value in (("tracking_uri", tracking_uri), ("experiment_name", experiment_name)):
            if not isinstance(value, str) or not value.strip():
                raise LayerLensError(f"logger.{name} must be a non-empty string, got {value!r}")
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name

    def experiment_id(self, client: MlflowClient) -> str:
        """The experiment's id, created as model training if new; one created before LayerLens set its kind (or by
        hand) gets that kind too, unless it has one."""
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            try:
                return client.create_experiment(self.experiment_name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
            except MlflowException:  # another process of a parallel sweep created it in between
                experiment = client.get_experiment_by_name(self.experiment_name)
                if experiment is None:
                    raise
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return experiment.experiment_id

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str], config: DictConfig, run_id: str | None = None):
        """A new run; or, given run_id, that (interrupted) run reopened as RUNNING, with its params and config kept."""
        client = SharedStoreClient(self.tracking_uri)
        resumed = run_id is not None
        if run_id is not None:
            try:
                client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            except MlflowException:
                raise LayerLensError(f"no MLflow run {run_id!r} in {self.tracking_uri}") from None
        else:
            run = client.create_run(
                self.experiment_id(client), run_name=run_name, tags={k: str(v) for k, v in tags.items()}
            )
            run_id = run.info.run_id
        resolved = OmegaConf.to_container(config, resolve=True)
        try:
            params = [] if resumed else [Param(k, v) for k, v in flatten(cast(dict, resolved)).items()]
            for start in range(0, len(params), 100):
                client.log_batch(run_id, params=params[start : start + 100])
            if not resumed:
                client.log_text(run_id, OmegaConf.to_yaml(resolved), CONFIG_ARTIFACT)
            yield MlflowRun(client, self.tracking_uri, run_id)
        except KeyboardInterrupt:
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException as err:
            client.set_tag(run_id, "layerlens.error", str(err).splitlines()[0] if str(err) else type(err).__name__)
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
