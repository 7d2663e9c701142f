"""Shared test setup: one torch thread (2-core machine), telemetry off, Prefect state in a temp
PREFECT_HOME, and one Prefect test harness (a real API server on SQLite) shared by the session."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="ssl-tests-prefect-home-"))
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
os.environ.setdefault("GIT_AUTHOR_NAME", "ssl-pipeline tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@example.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "ssl-pipeline tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@example.invalid")
# Stage subprocesses inherit this: one thread each keeps parallel test work from thrashing 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent / "helpers"))   # fixtures_repo, workspace, workers

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def prefect_harness():
    """A real Prefect API (temporary SQLite DB), started once per session (~15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """Every test its own SQLite MLflow store (also inherited by stage subprocesses)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # mlflow.set_experiment keeps the experiment id in a global and in MLFLOW_EXPERIMENT_ID: an id from the
    # previous test's store must not be looked up in this one.
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    import mlflow
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None
    mlflow.set_tracking_uri(uri)
    yield uri
    fluent._active_experiment_id = None
    mlflow.set_tracking_uri(None)
