"""kill -9 in the middle of pretraining, rerun: the run resumes and ends bitwise equal to a run that
was never interrupted. Real subprocesses, real SIGKILL, real checkpoint files (CPU, one thread).
A diverging run stops naming the step, keeps its last good checkpoint and logs no model.
(The pretrain *stage* killed under a Prefect task and resumed by its retry, bitwise equal to an
uninterrupted stage: tests/pipeline/tracking/test_outage.py.)"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import crash_worker as cw
from ssl_pipeline.config.schema import load_params
from fixtures_repo import HELPERS, PROJECT_ROOT

pytestmark = pytest.mark.slow
WORKER = HELPERS / "crash_worker.py"
TOTAL_STEPS = 15   # crash_worker: 3 epochs x 5 steps
PROJECT_PARAMS = PROJECT_ROOT / "params.yaml"


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
    # The uninterrupted reference: the same code in this process (one thread, like the workers).
    cw.train_core(method, tmp_path / "ref-ckpt", tmp_path / "reference.pt")

    expected = torch.load(tmp_path / "reference.pt", weights_only=True)
    actual = torch.load(tmp_path / "resumed.pt", weights_only=True)
    # Every tensor of the method: encoder, projector, BatchNorm statistics, and for MoCo the momentum
    # encoder, queue and queue pointer.
    assert_same_tensors(expected["method"], actual["method"])
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in expected["history"]]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in actual["history"]] == strip


@pytest.fixture
def prepared_root(tmp_path, monkeypatch):
    """A workspace holding only a prepared cache (crash_worker's tiny images) and its own MLflow store."""
    from ssl_core.data.cache import save_split

    images, labels = cw.tiny_data()
    prepared = tmp_path / "data/prepared"
    for split in ("unlabeled", "train", "val"):
        save_split(prepared / f"{split}.pt", images.numpy(), labels.numpy())
    (prepared / "meta.json").write_text(json.dumps({"classes": [str(c) for c in range(cw.CLASSES)],
                                                    "num_classes": cw.CLASSES, "channels": 3, "image_size": cw.SIZE}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cw.fresh_mlflow_db(tmp_path / "mlflow.db"))
    return tmp_path


def test_diverging_pretraining_fails_naming_the_step_and_logs_no_model(prepared_root):
    from mlflow.tracking import MlflowClient

    from ssl_pipeline.tracking import runs as tracking
    from ssl_pipeline.stages import pretrain
    from ssl_core.training.loop import NonFiniteLoss

    root = prepared_root
    params = load_params(PROJECT_PARAMS, ["pretrain.width=4", "pretrain.batch_size=8", "pretrain.device=cpu",
                                          "pretrain.checkpoint_every=1", "pretrain.log_every=1",
                                          "pretrain.method_params={hidden_dim: 32, projection_dim: 16}",
                                          "pretrain.optimizer=sgd", "pretrain.warmup_epochs=0"])
    # params.yaml caps pretrain.lr at 100, where SimCLR's normalised loss stays finite: divergence (a
    # bad batch, a broken method) is made here by setting the validated params past that cap in code
    params = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"lr": 1e12})})
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step (\d+) \(epoch 1\)") as err:
        pretrain.run(params, root)
    bad_step = int(str(err.value).split(" at step ")[1].split()[0])
    good = torch.load(root / "checkpoints/pretrain/last.pt", weights_only=True)   # the last good one remains
    assert 0 < good["state"]["global_step"] == bad_step - 1
    assert all(torch.isfinite(t).all() for t in good["method"].values() if t.is_floating_point())
    assert not (root / "models").exists()
    client = MlflowClient(tracking.tracking_uri())
    exp = client.get_experiment_by_name(params.tracking.experiment)
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert client.search_logged_models([exp.experiment_id]) == []
    assert client.search_registered_models() == []
