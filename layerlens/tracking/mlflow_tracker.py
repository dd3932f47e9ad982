import math
import time
from contextlib import contextmanager

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

CONFIG_ARTIFACT = "config.yaml"
MAX_PARAM_CHARS = 6000


class _AttachedLogger(MLFlowLogger):
    """Lightning's MLflow logger writing into a run that the tracker opened and will close."""

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
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name

    def experiment_id(self, client: MlflowClient) -> str:
        experiment = client.get_experiment_by_name(self.experiment_name)
        return experiment.experiment_id if experiment else client.create_experiment(self.experiment_name)

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str], config: DictConfig):
        client = MlflowClient(self.tracking_uri)
        run = client.create_run(self.experiment_id(client), run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        run_id = run.info.run_id
        resolved = OmegaConf.to_container(config, resolve=True)
        try:
            params = [Param(k, v) for k, v in flatten(resolved).items()]
            for start in range(0, len(params), 100):
                client.log_batch(run_id, params=params[start : start + 100])
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
