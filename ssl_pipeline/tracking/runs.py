"""MLflow at the edge: one parent run per pipeline run, one nested run per stage.

Stages run as DVC subprocesses; the flow passes the parent run id and the Prefect flow-run id to
them through the environment (SSL_PIPELINE_PARENT_RUN_ID, SSL_PIPELINE_FLOW_RUN_ID).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import pandas as pd
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ssl_core.fsutil import exclusive_lock
from ssl_pipeline.config.schema import Params

# Loading a logged model must never unpickle code. With this MLflow refuses pickle-format PyTorch
# models and checks that pt2 archives (what model_logging.py logs) hold no pickled objects; it is
# read at load time, so every loader that imports this module (predict, retrain, registry) is covered.
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

DEFAULT_URI = "sqlite:///mlflow.db"
PARENT_ENV = "SSL_PIPELINE_PARENT_RUN_ID"
FLOW_RUN_ENV = "SSL_PIPELINE_FLOW_RUN_ID"
OVERRIDES_ENV = "SSL_PIPELINE_OVERRIDES"
RUN_TOKEN_ENV = "SSL_PIPELINE_RUN_TOKEN"     # set by the CLI for a whole run, inherited by every child
RUN_TOKEN_TAG = "ssl_pipeline.run_token"


# MLflow's HTTP defaults retry for minutes (7 retries, backoff factor 2, 120 s timeout). An unattended
# stage should fail in seconds and let the Prefect task retry (with backoff) resume from its checkpoint.
# The timeout is the longest a request may stay silent (uploads that keep sending are not cut off).
FAIL_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
TRACKING_ERRORS = (MlflowException, requests.exceptions.RequestException)


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached or answers with errors."""


def unavailable(uri: str, err: BaseException, when: str = "") -> TrackingUnavailable:
    return TrackingUnavailable(f"MLflow tracking at {uri} is not usable{when}: {_cause(err)}. Start the tracking "
                               "server or point MLFLOW_TRACKING_URI at a working one; a rerun resumes from the last "
                               "checkpoint")


def _cause(err: BaseException) -> str:
    """What went wrong, in a few words: the root of MLflow's chain of wrapped transport errors."""
    chain, seen = [], err
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, (requests.exceptions.ReadTimeout, TimeoutError)) or "timed out" in str(e).lower():
            return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s (the server accepts " \
                   "connections but does not respond)"
    for e in chain:
        if isinstance(e, ConnectionRefusedError) or "connection refused" in str(e).lower():
            return "connection refused (nothing listens there)"
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return first if len(first) <= 300 else first[:297] + "..."


def probe(uri: str) -> None:
    """One request to an HTTP tracking server, no retries, bounded by the request timeout: a server
    that accepts connections but never answers fails here as fast as one that is not there."""
    if not uri.startswith(("http://", "https://")):
        return
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", FAIL_FAST_HTTP["MLFLOW_HTTP_REQUEST_TIMEOUT"]))
    try:   # any HTTP answer (even 401 or 404) means the server is there and responding
        requests.get(f"{uri.rstrip('/')}/health", timeout=(timeout, timeout)).close()
    except requests.exceptions.RequestException as err:
        raise unavailable(uri, err) from None


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def absolute_tracking_uri() -> str:
    """tracking_uri() with a relative SQLite path made absolute (against this process's folder), for
    stage processes that run in another folder (a run workspace)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def fail_fast_http_defaults() -> None:
    """Bounded MLflow HTTP retries/timeouts, unless the user chose their own in the environment."""
    for name, value in FAIL_FAST_HTTP.items():
        os.environ.setdefault(name, value)


def setup(experiment: str, root: Path = Path(".")) -> str:
    """Point MLflow at the tracking URI, create the experiment (artifacts under ./mlartifacts).

    Called before any work, so an unreachable or failing server stops a stage in seconds."""
    fail_fast_http_defaults()
    uri = tracking_uri()
    probe(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with _store_lock(uri):   # two first runs at once would both create the SQLite tables, the experiment
            exp_id = _experiment_id(experiment, uri, root)
        mlflow.set_experiment(experiment_id=exp_id)
    except Exception as err:  # noqa: BLE001 - any transport/server error means the same to the user
        raise unavailable(uri, err) from err
    return exp_id


def _experiment_id(experiment: str, uri: str, root: Path) -> str:
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not uri.startswith("http"):   # a server chooses its own (served) artifact store
        location = (Path(root).resolve() / "mlartifacts").as_uri()
    # "custom_model_development": the UI opens on training runs, not the GenAI views
    return mlflow.create_experiment(experiment, artifact_location=location,
                                    tags={"mlflow.experimentKind": "custom_model_development"})


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """For a local SQLite store, one process at a time creates its tables and experiments (outside
    the workspace, keyed by the database path); servers serialise their own clients."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    key = hashlib.sha1(str(Path(uri.removeprefix("sqlite:///")).resolve()).encode()).hexdigest()[:16]
    with exclusive_lock(Path(tempfile.gettempdir()) / f"ssl-pipeline-mlflow-{key}.lock"):
        yield


def git_commit(root: Path = Path(".")) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(stage: str, root: Path = Path("."), overrides: list[str] | None = None) -> dict[str, str]:
    """overrides: this run's --set values (default: what the parent passed in SSL_PIPELINE_OVERRIDES)."""
    tags = {"stage": stage, "git_commit": git_commit(root), "mlflow.source.git.commit": git_commit(root)}
    if os.environ.get(FLOW_RUN_ENV):
        tags["prefect_flow_run_id"] = os.environ[FLOW_RUN_ENV]
    if overrides is not None:
        if overrides:
            tags["overrides"] = json.dumps(overrides)
    elif os.environ.get(OVERRIDES_ENV):
        tags["overrides"] = os.environ[OVERRIDES_ENV]
    if os.environ.get(RUN_TOKEN_ENV):   # which CLI run made it: a killed run's leftovers are found by it
        tags[RUN_TOKEN_TAG] = os.environ[RUN_TOKEN_ENV]
    return tags


MAX_PARAMS_PER_BATCH = 100   # MLflow's cap
MAX_PARAM_CHARS = 6000


def log_params(params: Params, run_id: str | None = None) -> None:
    """Every params.yaml value as an MLflow param of `run_id` (default: the active run), in batches."""
    run_id = run_id or mlflow.active_run().info.run_id
    items = [mlflow.entities.Param(k, ("" if v is None else str(v))[:MAX_PARAM_CHARS]) for k, v in params.flat().items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client().log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])


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
    """A stage's MLflow run: nested under the pipeline's parent run when the flow started one.

    A tracking failure inside (server gone mid-run) surfaces as TrackingUnavailable naming the URI."""
    setup(params.tracking.experiment, root)
    parent = os.environ.get(PARENT_ENV) or None
    try:
        with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=run_tags(stage, root)) as run:
            log_params(params)
            if datasets:
                log_datasets(datasets)
            yield run
    except TRACKING_ERRORS as err:
        raise unavailable(tracking_uri(), err, f" (during the {stage} stage)") from err


def link_resumed_run(previous_run_id: str | None, step: int) -> None:
    """Tag the active run as resumed at `step` from `previous_run_id`; mark that crashed run KILLED."""
    mlflow.set_tag("resumed_from_step", str(step))
    if not previous_run_id:
        return
    mlflow.set_tag("resumed_from_run_id", previous_run_id)
    try:
        previous = client().get_run(previous_run_id)
        if previous.info.status == "RUNNING":   # SIGKILLed processes never end their run
            client().set_terminated(previous_run_id, status="KILLED")
        client().set_tag(previous_run_id, "resumed_by_run_id", mlflow.active_run().info.run_id)
    except MlflowException:   # e.g. the checkpoint came from another tracking store
        pass


def log_metrics_series(name: str, values: list[float], start_step: int = 1) -> None:
    for i, v in enumerate(values):
        if v is not None and np.isfinite(v):
            mlflow.log_metric(name, float(v), step=start_step + i)


def client() -> MlflowClient:
    return MlflowClient(tracking_uri())
