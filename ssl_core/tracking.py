"""MLflow at the edge: one parent run per pipeline run, one nested run per stage.

Stages run as DVC subprocesses; the flow passes the parent run id and the Prefect flow-run id to
them through the environment (SSL_PIPELINE_PARENT_RUN_ID, SSL_PIPELINE_FLOW_RUN_ID).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from ssl_core.config import Params

DEFAULT_URI = "sqlite:///mlflow.db"
PARENT_ENV = "SSL_PIPELINE_PARENT_RUN_ID"
FLOW_RUN_ENV = "SSL_PIPELINE_FLOW_RUN_ID"
OVERRIDES_ENV = "SSL_PIPELINE_OVERRIDES"


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached or answers with errors."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def setup(experiment: str, root: Path = Path(".")) -> str:
    """Point MLflow at the tracking URI, create the experiment (artifacts under ./mlartifacts)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if not uri.startswith("http"):   # a server chooses its own (served) artifact store
                location = (Path(root).resolve() / "mlartifacts").as_uri()
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
    except Exception as err:  # noqa: BLE001 - any transport/server error means the same to the user
        raise TrackingUnavailable(f"MLflow tracking at {uri} is not usable: {str(err).splitlines()[0][:300]}") from err
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: Path = Path(".")) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(stage: str, root: Path = Path(".")) -> dict[str, str]:
    tags = {"stage": stage, "git_commit": git_commit(root), "mlflow.source.git.commit": git_commit(root)}
    if os.environ.get(FLOW_RUN_ENV):
        tags["prefect_flow_run_id"] = os.environ[FLOW_RUN_ENV]
    if os.environ.get(OVERRIDES_ENV):
        tags["overrides"] = os.environ[OVERRIDES_ENV]
    return tags


def log_params(params: Params) -> None:
    flat = {k: ("" if v is None else str(v))[:6000] for k, v in params.flat().items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):   # MLflow caps params per batch
        mlflow.log_params(dict(items[i:i + 100]))


def log_datasets(datasets: dict[str, dict[str, Any]], context: str = "training") -> None:
    """Log each dataset as an MLflow dataset input whose digest is its DVC md5 (also as tags).

    datasets: name -> {"path": str, "md5": str, "manifest": DataFrame (optional)}.
    """
    for name, info in datasets.items():
        md5 = info.get("md5") or "untracked"
        mlflow.set_tag(f"data.{name}.md5", md5)
        frame = info.get("manifest")
        if frame is None:
            frame = pd.DataFrame({"path": [info["path"]]})
        ds = mlflow.data.from_pandas(frame, source=str(info["path"]), name=name, digest=md5[:36],
                                     targets="label" if "label" in frame.columns else None)
        mlflow.log_input(ds, context=context, tags={"dvc_md5": md5})


@contextlib.contextmanager
def stage_run(stage: str, params: Params, datasets: dict[str, dict[str, Any]] | None = None,
              root: Path = Path(".")) -> Iterator[mlflow.ActiveRun]:
    """A stage's MLflow run: nested under the pipeline's parent run when the flow started one."""
    setup(params.tracking.experiment, root)
    parent = os.environ.get(PARENT_ENV) or None
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=run_tags(stage, root)) as run:
        log_params(params)
        if datasets:
            log_datasets(datasets)
        yield run


def log_metrics_series(name: str, values: list[float], start_step: int = 1) -> None:
    for i, v in enumerate(values):
        if v is not None and np.isfinite(v):
            mlflow.log_metric(name, float(v), step=start_step + i)


def client() -> MlflowClient:
    return MlflowClient(tracking_uri())
