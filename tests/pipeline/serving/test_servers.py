"""Real servers on free loopback ports: a stage logging to `mlflow server` over HTTP, and
`ssl-pipeline ui` starting, answering and stopping both servers (no orphans)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ssl_pipeline.versioning import workspace as dvcops
from ssl_pipeline.serving import servers
from ssl_pipeline.versioning.repro import stage_env
from ui_process import READY_S, UiProcess, ui_env
from workspace import make_pipeline_workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    server = servers.start_mlflow(root, port=0)
    try:
        server.wait_ready(READY_S)
        yield server
    finally:
        server.stop()
    assert not servers.group_alive(server.pid)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def test_stage_logs_to_a_real_tracking_server_over_http(tmp_path, mlflow_server):
    root = make_pipeline_workspace(tmp_path)
    env = stage_env(root, {"MLFLOW_TRACKING_URI": mlflow_server.url})
    proc = subprocess.run([sys.executable, "-m", "ssl_pipeline", "prepare"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]

    client = MlflowClient(mlflow_server.url)
    experiment = yaml.safe_load((root / "params.yaml").read_text())["tracking"]["experiment"]
    exp = client.get_experiment_by_name(experiment)
    # The server chose the (served) artifact store, not a path on the client's disk.
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    [run] = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'prepare'")
    assert run.info.status == "FINISHED"
    assert run.data.params["data.image_size"] == "16"
    assert run.data.params["pretrain.method"] == "simclr"
    # tests/workspace.py writes 3 classes x 8 test images and 3 x 24 train images (train -> train + val).
    assert run.data.metrics["n_test"] == 24
    assert run.data.metrics["n_train"] + run.data.metrics["n_val"] == 72

    md5s = dvcops.dataset_md5s(root)
    logged = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(logged) == {"labeled", "unlabeled"}
    for name, ds_input in logged.items():
        md5 = md5s[f"data/raw/{name}"]
        assert ds_input.dataset.digest == md5[:36]
        assert {t.key: t.value for t in ds_input.tags}["dvc_md5"] == md5
        assert run.data.tags[f"data.{name}.md5"] == md5

    # The artifact went through the server into its own artifact root.
    assert [f.path for f in client.list_artifacts(run.info.run_id, "reports")] == ["reports/quarantine.csv"]
    served = list((Path(mlflow_server.log_path).parents[1] / "mlartifacts").rglob("quarantine.csv"))
    assert len(served) == 1


def test_ui_serves_both_and_ctrl_c_stops_both(tmp_path):
    ui = UiProcess(tmp_path, ui_env(tmp_path))
    try:
        ui.wait_started()
        assert set(ui.urls) == {"MLflow", "Prefect"}
        assert all(url.startswith("http://127.0.0.1:") for url in ui.urls.values())
        assert _get(ui.urls["MLflow"] + "/health") == "OK"
        assert json.loads(_get(ui.urls["Prefect"] + "/api/health")) is True
        assert f"export PREFECT_API_URL={ui.urls['Prefect']}/api" in ui.output
        # The MLflow server really uses the workspace's own store.
        assert (tmp_path / "mlflow.db").exists()

        ui.proc.send_signal(signal.SIGINT)
        assert ui.wait_exit() == 0, ui.output
        assert "servers stopped" in ui.output
        for name, pid in ui.pids.items():
            assert not servers.group_alive(pid), f"{name} server (pid {pid}) survived Ctrl-C"
    finally:
        ui.kill()


def test_ui_stops_the_other_server_and_fails_when_one_dies(tmp_path):
    ui = UiProcess(tmp_path, ui_env(tmp_path))
    try:
        ui.wait_started()
        servers._signal_group(ui.pids["Prefect"], signal.SIGKILL)
        code = ui.wait_exit()
        assert code != 0
        assert "the Prefect server stopped on its own" in ui.output
        assert not servers.group_alive(ui.pids["MLflow"])
    finally:
        ui.kill()


def test_busy_port_is_a_clear_error(mlflow_server):
    port = int(mlflow_server.url.rsplit(":", 1)[1])
    with pytest.raises(servers.ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
        servers.start_mlflow(Path("."), port=port)
