"""`ssl-pipeline ui --auth`: MLflow's basic-auth app with credentials from the environment only.

Unauthenticated and wrong-password requests get 401, the admin's succeed (raw REST and the MLflow
client), and the password never shows up in the command's output, the server logs or the files
the command writes."""
from __future__ import annotations

import base64
import os
import secrets
import signal
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from ssl_pipeline.cli import main as cli
from ssl_pipeline.serving import servers
from ui_process import UiProcess, ui_env

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=10"


def _status(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
def test_basic_auth_rejects_anonymous_and_accepts_the_admin(tmp_path, monkeypatch):
    password = "pw-" + secrets.token_hex(12)     # random: any occurrence in output is a leak
    env = ui_env(tmp_path, SSL_PIPELINE_MLFLOW_USER="alice", SSL_PIPELINE_MLFLOW_PASSWORD=password)
    ui = UiProcess(tmp_path, env, "--auth", "--no-prefect")
    try:
        ui.wait_started()
        url = ui.urls["MLflow"]
        assert url.startswith("http://127.0.0.1:")
        assert "basic auth on" in ui.output

        assert _status(url + SEARCH) == 401
        assert _status(url + SEARCH, "alice", "wrong-password-123") == 401
        assert _status(url + SEARCH, "alice", password) == 200

        # Clients authenticate the MLflow way: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        client = MlflowClient(url)
        exp_id = client.create_experiment("auth-check")
        run = client.create_run(exp_id)
        client.log_param(run.info.run_id, "lr", "0.1")
        assert client.get_run(run.info.run_id).data.params == {"lr": "0.1"}

        ui.proc.send_signal(signal.SIGINT)
        assert ui.wait_exit() == 0, ui.output
    finally:
        ui.kill()
    assert password not in ui.output
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".log", ".ini", ".txt", ".yaml")]
    assert any(p.name == "mlflow-server.log" for p in written)
    assert any(p.name == "basic_auth.ini" for p in written)
    for path in written:
        assert password not in path.read_text(errors="replace"), f"password leaked into {path}"
    assert (tmp_path / "mlflow_auth.db").exists()   # the user store lives in the workspace
    # The user store (password hashes), its SQLite side files and the auth config: owner only.
    private = [p for p in tmp_path.rglob("*") if p.name.startswith("mlflow_auth.db") or p.name == "basic_auth.ini"]
    assert len(private) >= 2 and {p.name: oct(p.stat().st_mode & 0o777) for p in private} == \
        {p.name: "0o600" for p in private}


def test_the_auth_files_are_created_or_tightened_to_owner_only(tmp_path):
    state = tmp_path / ".ssl-pipeline"
    (tmp_path / "mlflow_auth.db").write_bytes(b"")
    os.chmod(tmp_path / "mlflow_auth.db", 0o644)      # made by an older version, world-readable
    config = servers.auth_files(tmp_path, state)
    assert oct((tmp_path / "mlflow_auth.db").stat().st_mode & 0o777) == "0o600"
    assert oct(config.stat().st_mode & 0o777) == "0o600" and "database_uri = sqlite:///" in config.read_text()
    (tmp_path / "elsewhere").write_text("keep")
    config.unlink()
    config.symlink_to(tmp_path / "elsewhere")          # a planted link is not written through
    with pytest.raises(OSError):
        servers.auth_files(tmp_path, state)
    assert (tmp_path / "elsewhere").read_text() == "keep"


def test_auth_without_a_password_fails_before_starting_anything(tmp_path, monkeypatch, capsys):
    for name in ("SSL_PIPELINE_MLFLOW_PASSWORD", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["ui", "--auth"]) == 2
    err = capsys.readouterr().err
    assert "SSL_PIPELINE_MLFLOW_PASSWORD" in err and "not set" in err
    assert not (tmp_path / ".ssl-pipeline").exists()

    monkeypatch.setenv("SSL_PIPELINE_MLFLOW_PASSWORD", "short")
    with pytest.raises(servers.ServerError, match="shorter than 12 characters"):
        servers.auth_credentials()
