"""kill -9 in the middle of pretraining, rerun: the run resumes and ends bitwise equal to a run that
was never interrupted. Real subprocesses, real SIGKILL, real checkpoint files (CPU, one thread)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import crash_worker as cw
from ssl_core.config import load_params
from ssl_core.repro import stage_env
from workspace import make_pipeline_workspace

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("crash_worker.py")
TOTAL_STEPS = 15   # crash_worker: 3 epochs x 5 steps


def worker(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env, text=True, **kwargs)


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["state"]["global_step"])


def assert_same_tensors(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), f"{name} differs after resume"


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_sigkill_at_an_arbitrary_step_then_rerun_is_bitwise_equal(tmp_path, method):
    kill_at = random.randint(3, TOTAL_STEPS - 1)   # a different step on every test run
    reference = worker("core", "--method", method, "--ckpt-dir", str(tmp_path / "ref-ckpt"),
                       "--out", str(tmp_path / "reference.pt"), stdout=subprocess.DEVNULL)
    ckpt_dir = tmp_path / "ckpt"
    victim = worker("core", "--method", method, "--ckpt-dir", str(ckpt_dir), "--out", str(tmp_path / "resumed.pt"),
                    "--delay", "0.05", stdout=subprocess.PIPE)
    for line in victim.stdout:
        if line.strip() == f"step {kill_at}":
            os.kill(victim.pid, signal.SIGKILL)
            break
    assert victim.wait(timeout=120) == -signal.SIGKILL, f"the run ended before step {kill_at}"
    assert not (tmp_path / "resumed.pt").exists()
    saved = checkpoint_step(ckpt_dir / "last.pt")
    assert kill_at - 2 <= saved <= kill_at, (kill_at, saved)   # checkpoint_every 2

    rerun = worker("core", "--method", method, "--ckpt-dir", str(ckpt_dir), "--out", str(tmp_path / "resumed.pt"),
                   stdout=subprocess.PIPE)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0
    assert out.splitlines()[0] == f"resume {saved}"
    assert reference.wait(timeout=300) == 0

    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    actual = torch.load(tmp_path / "resumed.pt", weights_only=True)
    # Every tensor of the method: encoder, projector, BatchNorm statistics, and for MoCo the momentum
    # encoder, queue and queue pointer.
    assert_same_tensors(expected["method"], actual["method"])
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in expected["history"]]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in actual["history"]] == strip


MOCO_STAGE = {"pretrain.method": "moco", "pretrain.batch_size": 8, "pretrain.epochs": 2, "pretrain.device": "cpu",
              "pretrain.checkpoint_every": 1, "pretrain.log_every": 1, "pretrain.warmup_epochs": 1,
              "pretrain.method_params": {"queue_size": 32, "hidden_dim": 32, "projection_dim": 16, "bn_splits": 2}}


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """This test's own MLflow store (a copy of a migrated template), inherited by subprocesses."""
    uri = cw.fresh_mlflow_db(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def stage_workspace(tmp_path, mlflow_uri):
    """A prepared tiny workspace (prepare run in-process: one subprocess less)."""
    from ssl_core.stages import prepare

    root = make_pipeline_workspace(tmp_path, **MOCO_STAGE)
    prepare.run(load_params(root / "params.yaml"), root)
    return root


def pretrain_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ssl-pipeline")
    return client.search_runs([exp.experiment_id], "attributes.run_name = 'pretrain'", order_by=["attributes.start_time ASC"])


def test_pretrain_stage_killed_mid_run_resumes_to_the_same_encoder(stage_workspace, mlflow_uri, monkeypatch):
    from ssl_core.stages import pretrain

    root = stage_workspace
    params = load_params(root / "params.yaml")
    with monkeypatch.context() as patch:   # the uninterrupted reference, in this process (its model export skipped)
        patch.setattr(pretrain, "log_encoder_model", lambda backbone, spec: "models:/not-logged")
        pretrain.run(params, root)
    reference = torch.load(root / "models/encoder.pt", weights_only=True)
    reference_curve = pd.read_csv(root / "plots/pretrain.csv")
    shutil.rmtree(root / "models")
    assert not (root / "checkpoints/pretrain/last.pt").exists()   # cleared after success

    env = stage_env(root, {"MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1"})
    victim = subprocess.Popen([sys.executable, str(WORKER), "stage", "--delay", "0.1", "--", "pretrain"], cwd=root,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = root / "checkpoints/pretrain/last.pt"
    kill_at = random.randint(2, 16)    # of 18 steps (2 epochs x 9)
    while victim.poll() is None and not (last.exists() and checkpoint_step(last) >= kill_at):
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL, victim.stderr.read()[-2000:]
    saved = checkpoint_step(last)
    assert 0 < saved < 18

    rerun = subprocess.run([sys.executable, "-m", "ssl_core", "pretrain"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"global step {saved})" in rerun.stderr     # "resuming pretraining from ... (global step N)"
    assert_same_tensors(reference, torch.load(root / "models/encoder.pt", weights_only=True))
    pd.testing.assert_frame_equal(pd.read_csv(root / "plots/pretrain.csv"), reference_curve)   # every epoch
    assert not last.exists()

    _, crashed, resumed = pretrain_runs(mlflow_uri)
    assert crashed.info.status == "KILLED" and crashed.data.tags["resumed_by_run_id"] == resumed.info.run_id
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from_step"] == str(saved)
    assert resumed.data.tags["resumed_from_run_id"] == crashed.info.run_id
