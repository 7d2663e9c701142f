"""Tracking outages: an unreachable server, a server answering 500, a server that dies at the end of
training. The stage fails in seconds with the URI in one clear sentence, the checkpoint survives, and
a rerun (or a Prefect task retry) resumes instead of retraining. Real servers, real processes."""
from __future__ import annotations

import contextlib
import http.server
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

import crash_worker as cw
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.config.schema import load_params
from ssl_pipeline.versioning.repro import stage_env
from workspace import make_pipeline_workspace
from fixtures_repo import HELPERS

pytestmark = pytest.mark.slow
WORKER = HELPERS / "crash_worker.py"
# MoCo v2: its queue and momentum encoder must survive a crash too.
PARAMS = {"pretrain.method": "moco", "pretrain.batch_size": 8, "pretrain.epochs": 2, "pretrain.device": "cpu",
          "pretrain.checkpoint_every": 1, "pretrain.log_every": 1, "pretrain.warmup_epochs": 1,
          "pretrain.method_params": {"queue_size": 32, "hidden_dim": 32, "projection_dim": 16, "bn_splits": 2}}
TOTAL_STEPS = 18   # 72 unlabeled images / batch 8 = 9 steps per epoch, 2 epochs
CHECKPOINT = Path("checkpoints/pretrain/last.pt")


class TrackingServer:
    """MLflow's own tracking-server app, served from a thread of this process (starting `mlflow
    server` costs a minute on a busy 2-core machine); stop() is the server dying."""

    def __init__(self, backend_uri: str, artifact_root: Path):
        from mlflow.server import app
        from mlflow.server.handlers import initialize_backend_stores
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        initialize_backend_stores(backend_uri, default_artifact_root=artifact_root.as_uri())
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.uri = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Always500(http.server.BaseHTTPRequestHandler):
    requests = 0

    def _fail(self) -> None:
        type(self).requests += 1
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"internal error")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _fail

    def log_message(self, *args) -> None:
        pass


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stage_subprocess_env(root: Path, uri: str) -> dict[str, str]:
    env = stage_env(root, {"MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"})
    for name in tracking.FAIL_FAST_HTTP:   # the project's own defaults must make it fail fast
        env.pop(name, None)
    return env


def step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["state"]["global_step"])


@pytest.fixture(scope="module")
def died(tmp_path_factory):
    """Pretraining through a live MLflow server that dies just before the final model logging.

    Returns the workspace (checkpoint left at the last step), the backend store, the worker's stderr."""
    import mlflow

    from ssl_pipeline.stages import prepare

    base = tmp_path_factory.mktemp("outage")
    root = make_pipeline_workspace(base, **PARAMS)
    backend = cw.fresh_mlflow_db(base / "backend.db")
    with pytest.MonkeyPatch.context() as patch:
        for name in tracking.FAIL_FAST_HTTP:
            patch.delenv(name, raising=False)
        patch.setenv("MLFLOW_TRACKING_URI", backend)
        prepare.run(load_params(root / "params.yaml"), root)
    server = TrackingServer(backend, base / "artifacts")
    flags = base / "flags"
    flags.mkdir()
    worker = subprocess.Popen([sys.executable, str(WORKER), "stage", "--pause-before-end", str(flags), "--", "pretrain"],
                              cwd=root, env=stage_subprocess_env(root, server.uri), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    while worker.poll() is None and not (flags / "paused").exists():
        time.sleep(0.05)
    server.stop()                       # training is done; the server dies before the model is logged
    (flags / "go").touch()
    _, stderr = worker.communicate(timeout=300)
    yield {"root": root, "backend": backend, "base": base, "uri": server.uri, "code": worker.returncode,
           "stderr": stderr, "checkpoint": (root / CHECKPOINT).read_bytes() if (root / CHECKPOINT).exists() else b""}
    mlflow.set_tracking_uri(None)


def copy_workspace(source: Path, target: Path) -> Path:
    """The workspace without its checkpoint and stage outputs (top-level checkpoints/, models/)."""
    skip = {"checkpoints", "models"}
    shutil.copytree(source, target, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if Path(folder) == source and n in skip])
    return target


def copy_with_checkpoint(died: dict, tmp_path: Path) -> Path:
    root = copy_workspace(died["root"], tmp_path / "ws")
    (root / CHECKPOINT).parent.mkdir(parents=True)
    (root / CHECKPOINT).write_bytes(died["checkpoint"])
    return root


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_server_dying_at_the_end_fails_clearly_and_keeps_the_final_checkpoint(died):
    assert died["code"] != 0
    [line] = error_lines(died["stderr"])
    assert f"MLflow tracking at {died['uri']} is not usable (during the pretrain stage)" in line
    assert "Traceback" not in died["stderr"]
    assert died["checkpoint"], "the checkpoint was removed although the stage failed"
    assert step(died["root"] / CHECKPOINT) == TOTAL_STEPS


def test_unreachable_server_fails_before_any_work_and_keeps_the_checkpoint(died, tmp_path, monkeypatch):
    from ssl_pipeline.stages import pretrain

    root = copy_with_checkpoint(died, tmp_path)
    uri = f"http://127.0.0.1:{closed_port()}"
    for name in tracking.FAIL_FAST_HTTP:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(tracking.TrackingUnavailable, match=f"MLflow tracking at {uri} is not usable"):
        pretrain.run(load_params(root / "params.yaml"), root)
    assert (root / CHECKPOINT).read_bytes() == died["checkpoint"]
    assert not (root / "models").exists()


def test_server_answering_500_fails_fast_through_the_cli_and_keeps_the_checkpoint(died, tmp_path):
    root = copy_with_checkpoint(died, tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Always500)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        # MLflow's defaults would retry for minutes; the project's bounded retries stay far below the timeout.
        done = subprocess.run([sys.executable, "-m", "ssl_pipeline", "pretrain"], cwd=root, env=stage_subprocess_env(root, uri),
                              capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode != 0
    [line] = error_lines(done.stderr)
    assert f"MLflow tracking at {uri} is not usable" in line and "500" in line
    assert "Traceback" not in done.stderr
    # The liveness probe (any answer, even 500, shows a responding server), then one call retried twice
    # (MLFLOW_HTTP_REQUEST_MAX_RETRIES=2).
    assert Always500.requests == 1 + 3
    assert (root / CHECKPOINT).read_bytes() == died["checkpoint"]
    assert not (root / "models").exists()


class SilentServer:
    """Accepts TCP connections and never answers: a hung server, or a proxy whose backend is gone."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.sock.accept()[0])

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def test_a_server_that_accepts_but_never_answers_fails_like_an_unreachable_one(died, tmp_path):
    root = copy_with_checkpoint(died, tmp_path)
    server = SilentServer()
    try:
        done = subprocess.run([sys.executable, "-m", "ssl_pipeline", "pretrain"], cwd=root,
                              env=stage_subprocess_env(root, server.uri), capture_output=True, text=True, timeout=600)
    finally:
        server.close()
    assert done.returncode != 0
    [line] = error_lines(done.stderr)
    timeout = tracking.FAIL_FAST_HTTP["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    assert f"MLflow tracking at {server.uri} is not usable: no answer within {timeout} s" in line
    assert "Traceback" not in done.stderr
    assert len(server.accepted) == 1   # one request bounded by the timeout, not MLflow's retries of it
    assert (root / CHECKPOINT).read_bytes() == died["checkpoint"]
    assert not (root / "models").exists()


def test_rerun_after_the_server_returns_resumes_instead_of_retraining(died):
    from mlflow.tracking import MlflowClient

    root = died["root"]
    server = TrackingServer(died["backend"], died["base"] / "artifacts")   # the server is back
    try:
        done = subprocess.run([sys.executable, "-m", "ssl_pipeline", "pretrain"], cwd=root,
                              env=stage_subprocess_env(root, server.uri), capture_output=True, text=True, timeout=600)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"(global step {TOTAL_STEPS})" in done.stderr and " step 1/9 " not in done.stderr   # nothing retrained
    assert (root / "models/encoder.pt").exists() and not (root / CHECKPOINT).exists()
    client = MlflowClient(died["backend"])
    exp = client.get_experiment_by_name("ssl-pipeline")
    first, second = client.search_runs([exp.experiment_id], "attributes.run_name = 'pretrain'",
                                       order_by=["attributes.start_time ASC"])
    assert first.info.status == "KILLED"      # never ended by the dead server; marked by the resume
    assert second.info.status == "FINISHED"
    assert second.data.tags["resumed_from_step"] == str(TOTAL_STEPS)
    assert second.data.tags["resumed_from_run_id"] == first.info.run_id
    assert len(client.get_metric_history(second.info.run_id, "loss")) == 2   # the whole curve, re-logged


def kill_stage_at(root: Path, kill_at: int, outcome: dict, stop: threading.Event) -> None:
    """Once the stage's checkpoint reaches step `kill_at`, SIGKILL the stage process (a crashed attempt)."""
    last, seen = root / CHECKPOINT, None
    while not stop.is_set():
        try:
            mtime = last.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != seen and mtime is not None and step(last) >= kill_at:
            for proc in psutil.process_iter(["cmdline", "cwd"]):
                cmd = proc.info["cmdline"] or []
                if proc.info["cwd"] == str(root) and cmd[-3:] == ["-m", "ssl_pipeline", "pretrain"]:
                    os.kill(proc.pid, signal.SIGKILL)
                    outcome["killed_at"] = step(last)
                    return
        seen = mtime
        time.sleep(0.01)


def test_prefect_retry_resumes_a_killed_stage_bitwise_equal(died, tmp_path, prefect_harness, monkeypatch):
    """The pipeline's stage task (dvc repro -> `python -m ssl_pipeline pretrain`) is SIGKILLed mid-run;
    the Prefect retry resumes it; the encoder equals an uninterrupted stage's, bit for bit."""
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from prefect import flow

    from flows.pipeline import run_stage
    from ssl_pipeline.stages import pretrain

    reference_root = copy_workspace(died["root"], tmp_path / "reference")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cw.fresh_mlflow_db(tmp_path / "reference.db"))
    with monkeypatch.context() as patch:   # uninterrupted, in this process (its model export skipped)
        patch.setattr(pretrain, "log_torch_model", lambda model, example, name: "models:/not-logged")
        pretrain.run(load_params(reference_root / "params.yaml"), reference_root)

    root = copy_workspace(died["root"], tmp_path / "ws")
    uri = cw.fresh_mlflow_db(tmp_path / "mlflow.db")
    env = {"MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}

    @flow(name="retry-pretrain")
    def retry_pretrain(root: Path) -> bool:   # the pipeline's stage task, with the flow's retry options
        return run_stage.with_options(retries=1, retry_delay_seconds=[1])("pretrain", root, env)

    outcome: dict = {}
    stop = threading.Event()
    kill_at = random.randint(1, 4)   # early: nothing slows this stage down, it must not finish first
    killer = threading.Thread(target=kill_stage_at, args=(root, kill_at, outcome, stop), daemon=True)
    killer.start()
    try:
        assert retry_pretrain(root) is True
    finally:
        stop.set()
        killer.join()
    assert 0 < outcome.get("killed_at", 0) < TOTAL_STEPS, "the stage finished before it could be killed"

    for name, tensor in torch.load(reference_root / "models/encoder.pt", weights_only=True).items():
        assert torch.equal(tensor, torch.load(root / "models/encoder.pt", weights_only=True)[name]), name
    pd.testing.assert_frame_equal(pd.read_csv(root / "plots/pretrain.csv"), pd.read_csv(reference_root / "plots/pretrain.csv"))
    assert not (root / CHECKPOINT).exists()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ssl-pipeline")
    first, second = client.search_runs([exp.experiment_id], "attributes.run_name = 'pretrain'",
                                       order_by=["attributes.start_time ASC"])
    assert first.info.status == "KILLED" and first.data.tags["resumed_by_run_id"] == second.info.run_id
    assert second.info.status == "FINISHED"
    assert second.data.tags["resumed_from_step"] == str(outcome["killed_at"])
    assert second.data.tags["resumed_from_run_id"] == first.info.run_id
