"""`ssl-pipeline run` as users start it (real CLI processes on a tiny real workspace): `--set` never
writes params.yaml, runs in one workspace take turns and each trains with its own settings, recorded
truthfully in MLflow and dvc.lock; a run killed with SIGKILL leaves no process, no server and no
MLflow run RUNNING behind, and the next run starts clean; an outage is one `error:` line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ssl_pipeline.versioning.run_workspace import RUNS_DIR
from workspace import make_pipeline_workspace

pytestmark = pytest.mark.slow
MARK = "SSL_PIPELINE_TEST_MARK"   # every process a test's CLI run starts inherits it
LIVENESS_S = 300                  # how long a test waits for a process to appear or go (never a speed check)


def cli_env(root: Path, mark: str, prefect_api: bool = True, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_TRACKING_"))}
    env.update({MARK: mark, "MLFLOW_TRACKING_URI": f"sqlite:///{root.parent / 'mlflow.db'}", "OMP_NUM_THREADS": "1"})
    if prefect_api:   # the session's Prefect test server: no temporary server to start per run
        from prefect.settings import PREFECT_API_URL

        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    env.update(extra)
    return env


def start_run(root: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ssl_pipeline", "run", *args], cwd=root, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def marked(mark: str) -> list[tuple[int, list[str]]]:
    """(pid, command line) of every live process carrying the test's mark."""
    found, wanted = [], f"{MARK}={mark}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").rstrip("\0")
                    found.append((int(entry.name), cmdline.split("\0")))
        except OSError:
            continue
    return found


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + LIVENESS_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {LIVENESS_S} s for {what}")
        time.sleep(0.2)


def stage_running(mark: str, stage: str) -> bool:
    return any(cmd[-3:] == ["-m", "ssl_pipeline", stage] for _, cmd in marked(mark))


def runs(store: str, name: str) -> list:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ssl-pipeline")
    return client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'") if experiment else []


@pytest.fixture
def workspace(tmp_path):
    return make_pipeline_workspace(tmp_path, **{"pretrain.log_every": 1, "pretrain.checkpoint_every": 1})


def test_two_concurrent_overridden_runs_each_get_their_own_settings(workspace, prefect_harness):
    root = workspace
    before = (root / "params.yaml").read_bytes()
    mark = uuid.uuid4().hex
    env = cli_env(root, mark)
    first = start_run(root, env, "--set", "pretrain.epochs=1", "--set", "finetune.min_steps=3")
    second = start_run(root, env, "--set", "pretrain.epochs=2", "--set", "finetune.min_steps=4")
    outputs = [first.communicate(timeout=1800)[0], second.communicate(timeout=1800)[0]]
    assert first.returncode == 0, outputs[0][-3000:]
    assert second.returncode == 0, outputs[1][-3000:]
    assert sum("waiting for the run in" in out for out in outputs) == 1   # the runs took turns
    assert (root / "params.yaml").read_bytes() == before
    store = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(store)
    pipelines = runs(store, "pipeline")
    assert len(pipelines) == 2
    for parent in pipelines:
        overrides = json.loads(parent.data.tags["overrides"])
        epochs = int(overrides[0].split("=")[1])
        assert parent.data.params["pretrain.epochs"] == str(epochs) and parent.info.status == "FINISHED"
        fetched = Path(root.parent / parent.info.run_id)
        fetched.mkdir()
        used = yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "params.yaml", str(fetched))).read_text())
        assert used["pretrain"]["epochs"] == epochs   # the params file the stages read
        [pretrain] = [r for r in runs(store, "pretrain") if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert pretrain.data.params["pretrain.epochs"] == str(epochs)
        assert len(client.get_metric_history(pretrain.info.run_id, "loss")) == epochs   # it trained that long
        assert json.loads(pretrain.data.tags["overrides"]) == overrides
    last = max(pipelines, key=lambda r: r.info.end_time)
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["pretrain"]["params"]["params.yaml"]["pretrain"]["epochs"] == \
        int(last.data.params["pretrain.epochs"])   # dvc.lock: what made the outputs now in the workspace
    assert not any((root / RUNS_DIR).iterdir())   # both run workspaces were adopted and removed


def test_a_sigkilled_run_leaves_nothing_running_and_the_next_run_starts_clean(workspace, prefect_harness):
    root = workspace
    before = (root / "params.yaml").read_bytes()
    mark = uuid.uuid4().hex
    env = cli_env(root, mark, prefect_api=False)   # its own temporary Prefect server, which must go too
    killed = start_run(root, env, "--set", "pretrain.epochs=30")
    threading.Thread(target=killed.communicate, daemon=True).start()
    wait_for(lambda: stage_running(mark, "pretrain"), "the pretrain stage of the run")
    assert any("uvicorn" in " ".join(cmd) for _, cmd in marked(mark)), "no temporary Prefect server to leave behind"
    os.kill(killed.pid, signal.SIGKILL)
    wait_for(lambda: not marked(mark), "every process of the killed run to end")
    store = env["MLFLOW_TRACKING_URI"]
    [pipeline] = runs(store, "pipeline")
    assert pipeline.info.status == "KILLED"
    assert not [r.info.run_name for r in runs(store, "prepare") + runs(store, "pretrain") if r.info.status == "RUNNING"]
    assert (root / "params.yaml").read_bytes() == before

    again = start_run(root, cli_env(root, uuid.uuid4().hex), "--set", "pretrain.epochs=30")
    out = again.communicate(timeout=1800)[0]
    assert again.returncode == 0, out[-3000:]
    assert (root / "params.yaml").read_bytes() == before
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ssl-pipeline")
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


def test_the_next_run_cleans_up_after_a_run_whose_watchdog_was_killed_too(workspace, prefect_harness):
    root = workspace
    mark = uuid.uuid4().hex
    env = cli_env(root, mark)
    killed = start_run(root, env, "--set", "pretrain.epochs=30")
    threading.Thread(target=killed.communicate, daemon=True).start()
    wait_for(lambda: stage_running(mark, "pretrain"), "the pretrain stage of the run")
    [watchdog] = [pid for pid, cmd in marked(mark) if "ssl_pipeline.cli.guard" in cmd]
    os.kill(watchdog, signal.SIGKILL)          # as after a reboot: nobody cleans up on its behalf
    os.kill(killed.pid, signal.SIGKILL)
    assert marked(mark), "the killed run left nothing to clean up"   # dvc and the orphaned stage train on

    again = start_run(root, cli_env(root, uuid.uuid4().hex))
    out = again.communicate(timeout=1800)[0]
    assert again.returncode == 0, out[-3000:]
    assert "a killed `ssl-pipeline run`" in out and "marked KILLED" in out
    assert not marked(mark)
    statuses = [r.info.status for r in runs(env["MLFLOW_TRACKING_URI"], "pipeline")]
    assert sorted(statuses) == ["FINISHED", "KILLED"]


def test_an_outage_is_one_error_line_and_the_traceback_only_with_debug(workspace, prefect_harness):
    root = workspace
    env = cli_env(root, uuid.uuid4().hex, MLFLOW_TRACKING_URI="http://127.0.0.1:9")   # nothing listens there
    plain = start_run(root, env)
    out = plain.communicate(timeout=600)[0]
    assert plain.returncode == 2
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == ["error: MLflow tracking at http://127.0.0.1:9 is not usable: connection refused (nothing "
                      "listens there). Start the tracking server or point MLFLOW_TRACKING_URI at a working one; a "
                      "rerun resumes from the last checkpoint"]
    assert "Traceback" not in out and "Retrying (Retry(" not in out
    debug = start_run(root, env, "--debug")
    out = debug.communicate(timeout=600)[0]
    assert debug.returncode != 0 and "Traceback" in out


def test_a_second_stage_of_the_same_kind_is_refused(workspace, tmp_path):
    from ssl_pipeline.versioning.run_workspace import stage_lock

    with stage_lock(workspace, "pretrain"):
        done = subprocess.run([sys.executable, "-m", "ssl_pipeline", "pretrain"], cwd=workspace, capture_output=True,
                              text=True, timeout=600, env=cli_env(workspace, "x", prefect_api=False))
    assert done.returncode == 2
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert f"another pretrain is running in {workspace}" in line and "share one checkpoint" in line
