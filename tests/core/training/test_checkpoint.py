"""Checkpointer: what a checkpoint holds, when it is written, and that a bad write (full disk,
diverged weights, a crash mid-write) never replaces the last good one. Real files, real training."""
from __future__ import annotations

import errno
import io
import os
import random
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import torch

import crash_worker as cw
from ssl_core.training import checkpoint as checkpoint_module
from ssl_core.training.checkpoint import Checkpointer, CheckpointWriteError
from ssl_core.methods import get_method_class
from ssl_core.training.optim import build_optimizer, warmup_cosine
from ssl_core.training.loop import NonFiniteLoss, TrainConfig, TrainState, pretrain

pytestmark = pytest.mark.slow
CFG = TrainConfig(epochs=2, batch_size=cw.BATCH, lr=3e-3, warmup_epochs=1, log_every=1)   # 5 steps per epoch


class RecordingCheckpointer(Checkpointer):
    """The real Checkpointer, noting where each successful save happened."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.saved: list[tuple[int, int, int]] = []

    def save(self, method, optimizer, scheduler, state):
        super().save(method, optimizer, scheduler, state)
        self.saved.append((state.epoch, state.step_in_epoch, state.global_step))


def load(path):
    return torch.load(path, weights_only=True)


def test_saves_every_n_steps_and_at_epoch_ends(tmp_path):
    images, _ = cw.tiny_data()
    ckpt = RecordingCheckpointer(tmp_path, "fp", every_steps=2)
    history = pretrain(cw.build("simclr"), images, CFG, checkpointer=ckpt)
    # (epoch, step in epoch, global step): every 2nd step, plus each epoch end (epoch counter advanced)
    assert ckpt.saved == [(0, 2, 2), (0, 4, 4), (1, 0, 5), (1, 1, 6), (1, 3, 8), (1, 5, 10), (2, 0, 10)]
    final = load(ckpt.path)
    assert final["state"]["history"] == history and len(history) == 2
    assert not list(tmp_path.glob(".last.pt.tmp-*"))


def seed_all(a: int, b: int, c: int) -> None:
    random.seed(a), np.random.seed(b), torch.manual_seed(c)


def draws():
    return random.random(), np.random.rand(), torch.rand(1).item()


def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    images, _ = cw.tiny_data()
    method = cw.build("moco")
    seed_all(1, 2, 3)
    expected_draws = draws()
    seed_all(1, 2, 3)   # training must not consume these streams; the checkpoint must carry them
    ckpt = RecordingCheckpointer(tmp_path, "fp", every_steps=3)
    ckpt.metadata = {"run_id": "abc123"}
    pretrain(method, images, TrainConfig(epochs=1, batch_size=cw.BATCH, log_every=1), checkpointer=ckpt)
    data = load(ckpt.path)
    assert set(data) >= {"method", "optimizer", "scheduler", "scaler", "rng", "state", "metadata", "fingerprint"}
    # The method state carries the momentum encoder and the MoCo queue (+ pointer), not just the backbone.
    assert {"queue", "queue_ptr"} <= set(data["method"])
    assert any(k.startswith("momentum_backbone.") for k in data["method"])
    assert data["optimizer"]["state"] and data["scheduler"]["last_epoch"] == 5
    assert set(data["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert data["metadata"] == {"run_id": "abc123"}
    assert ckpt.resume_info() == {"run_id": "abc123", "epoch": 1, "step_in_epoch": 0, "global_step": 5,
                                  "history": data["state"]["history"]}

    # Restore into a differently initialised method with scrambled RNGs: weights, queue, optimizer,
    # scheduler, position and every RNG stream come back exactly.
    seed_all(9, 9, 9)
    other = cw.build("moco", seed=7)
    opt = build_optimizer(other, "adamw", 1e-3, 1e-4)
    sched = warmup_cosine(opt, 0, 5)
    state = Checkpointer(tmp_path, "fp").restore(other, opt, sched)
    assert draws() == expected_draws
    assert state == TrainState(epoch=1, step_in_epoch=0, global_step=5, epoch_losses=[],
                               history=data["state"]["history"])
    for name, tensor in method.state_dict().items():
        assert torch.equal(tensor, other.state_dict()[name]), name
    assert sched.last_epoch == 5
    for a, b in zip(opt.state_dict()["state"].values(), data["optimizer"]["state"].values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in b)


class NaNAtStep(get_method_class("simclr")):
    """SimCLR whose loss turns NaN from optimizer step `nan_step` on (the weights then follow)."""

    name = ""   # not registered: the registry's "simclr" stays the real one
    nan_step = 5

    def loss(self, images_u8, gen):
        self.calls = getattr(self, "calls", 0) + 1
        loss, extra = super().loss(images_u8, gen)
        return (loss * float("nan") if self.calls >= self.nan_step else loss), extra


def nan_method():
    method = cw.build("simclr")
    method.__class__ = NaNAtStep
    return method


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    images, _ = cw.tiny_data()
    ckpt = RecordingCheckpointer(tmp_path, "fp", every_steps=2)
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 5 \(epoch 1\)"):
        pretrain(nan_method(), images, CFG, checkpointer=ckpt)
    assert ckpt.saved == [(0, 2, 2), (0, 4, 4)]
    data = load(ckpt.path)
    assert data["state"]["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in data["method"].values() if t.is_floating_point())


def test_nan_between_log_lines_is_caught_before_the_checkpoint_and_named(tmp_path):
    # Losses are only synced every log_every steps; the checkpoint write must still never see NaN.
    images, _ = cw.tiny_data()
    cfg = TrainConfig(epochs=2, batch_size=cw.BATCH, lr=3e-3, log_every=100)
    ckpt = RecordingCheckpointer(tmp_path, "fp", every_steps=3)
    method = nan_method()
    method.nan_step = 2
    with pytest.raises(NonFiniteLoss, match="at step 2 "):
        pretrain(method, images, cfg, checkpointer=ckpt)
    assert ckpt.saved == [] and not ckpt.path.exists()


def test_non_finite_weights_are_never_written(tmp_path):
    images, _ = cw.tiny_data()
    method = cw.build("simclr")
    ckpt = Checkpointer(tmp_path, "fp", every_steps=5)
    pretrain(method, images, TrainConfig(epochs=1, batch_size=cw.BATCH), checkpointer=ckpt)
    good = ckpt.path.read_bytes()
    opt = build_optimizer(method, "adamw", 1e-3, 0)
    with torch.no_grad():
        method.backbone.trunk.conv1.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLoss, match="weights became NaN/Inf by step 7"):
        ckpt.save(method, opt, warmup_cosine(opt, 0, 5), TrainState(global_step=7))
    assert ckpt.path.read_bytes() == good


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (a disk that really fills up), or None where mounting is not allowed."""
    mount = tmp_path / "tinyfs"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


class HalfThenFull(io.FileIO):
    """A file whose first write stores half the bytes and then fails like a full disk."""

    def write(self, data):
        super().write(bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fill_disk(folder):
    stat = os.statvfs(folder)
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * (stat.f_bavail * stat.f_frsize - 8192))


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, tiny_fs, monkeypatch):
    images, _ = cw.tiny_data()
    directory = (tiny_fs or tmp_path) / "ckpt"

    class DiskFillsAfterFirstSave(RecordingCheckpointer):
        def save(self, *args):
            super().save(*args)
            if tiny_fs is not None:
                fill_disk(tiny_fs)
            else:   # no tmpfs here: the writer hits ENOSPC half-way through the next file
                monkeypatch.setattr(checkpoint_module, "open", HalfThenFull, raising=False)

    ckpt = DiskFillsAfterFirstSave(directory, "fp", every_steps=2)
    with pytest.raises(CheckpointWriteError, match="at step 4 failed .*No space left on device.*previous checkpoint") as err:
        pretrain(cw.build("simclr"), images, CFG, checkpointer=ckpt)
    assert err.value.errno == errno.ENOSPC
    assert ckpt.saved == [(0, 2, 2)]
    assert not list(directory.glob(".last.pt.tmp-*"))   # the partial file is gone
    monkeypatch.undo()
    # The survivor is complete: it loads and resumes.
    method = cw.build("simclr")
    opt = build_optimizer(method, "adamw", 1e-3, 0)
    state = Checkpointer(directory, "fp").restore(method, opt, warmup_cosine(opt, 0, 10))
    assert state is not None and state.global_step == 2


def test_unusable_checkpoints_mean_a_fresh_start(tmp_path, caplog):
    images, _ = cw.tiny_data()
    ckpt = Checkpointer(tmp_path, "fp", every_steps=2)
    pretrain(cw.build("simclr"), images, TrainConfig(epochs=1, batch_size=cw.BATCH), checkpointer=ckpt)
    assert Checkpointer(tmp_path, "other params").resume_info() is None      # other params/data
    assert "belongs to other params" in caplog.text
    ckpt.path.write_bytes(ckpt.path.read_bytes()[:1000])                     # truncated (never by us)
    assert Checkpointer(tmp_path, "fp").resume_info() is None
    assert "unreadable" in caplog.text


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    stale = tmp_path / f".last.pt.tmp-{uuid.uuid4().int % 10**6}"
    stale.write_bytes(b"half a checkpoint")
    ckpt = Checkpointer(tmp_path, "fp")
    assert not stale.exists() and ckpt.resume_info() is None
