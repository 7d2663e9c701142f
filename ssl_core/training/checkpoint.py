"""Crash-safe training checkpoints: atomic writes, automatic resume, never a half-written file.

A checkpoint holds the whole method (encoder, heads, momentum encoders, queues), optimizer,
LR scheduler, AMP scaler, every RNG state (torch, CUDA, numpy, python), the position in the epoch,
the epoch's losses so far and the finished epochs' metrics, plus caller metadata (e.g. the MLflow
run id, so a resumed run can link to the crashed one). It is written to a temp file, fsynced and
renamed over `last.pt`, so the previous good checkpoint survives any crash or full disk, and it is
never written from diverged (NaN/Inf) weights. Loading uses weights_only=True: nothing is
unpickled as code.
"""
from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import numpy as np
import torch

from ssl_core.fsutil import atomic_torch_save
from ssl_core.training.loop import NonFiniteLoss, TrainState

log = logging.getLogger("ssl_pipeline")

FORMAT_VERSION = 2


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (e.g. disk full); the previous checkpoint is intact."""


def _numpy_rng_state() -> dict:
    # As tensors and plain numbers: weights_only loading accepts those, not numpy arrays.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: dict) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_rng_state(), "python": random.getstate()}


def set_rng_states(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng.get("cuda"):
        torch.cuda.set_rng_state_all(rng["cuda"])
    _set_numpy_rng_state(rng["numpy"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


class Checkpointer:
    """`last.pt` under `directory`, valid only for the same `fingerprint` (params + data identity)."""

    def __init__(self, directory: Path, fingerprint: str, every_steps: int = 0, scaler=None):
        self.directory = Path(directory)
        self.path = self.directory / "last.pt"
        self.fingerprint = hashlib.sha256(fingerprint.encode()).hexdigest()
        self.every_steps = every_steps
        self.scaler = scaler
        self.metadata: dict[str, str] = {}   # saved with every checkpoint (e.g. {"run_id": ...})
        self._cached: dict | None = None
        self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        # A SIGKILL during a write leaves `.last.pt.tmp-<pid>` behind; it was never the checkpoint.
        for tmp in self.directory.glob(f".{self.path.name}.tmp-*"):
            tmp.unlink(missing_ok=True)

    def _load(self) -> dict | None:
        if self._cached is not None:
            return self._cached
        if not self.path.exists():
            return None
        try:
            ckpt = torch.load(self.path, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint means "start fresh", loudly
            log.warning("checkpoint %s is unreadable (%s); starting from scratch", self.path,
                        str(err).splitlines()[0][:200])
            return None
        if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != self.fingerprint:
            log.warning("checkpoint %s belongs to other params or data; starting from scratch", self.path)
            return None
        if ckpt.get("format") != FORMAT_VERSION:
            log.warning("checkpoint %s has an old format; starting from scratch", self.path)
            return None
        self._cached = ckpt
        return ckpt

    def resume_info(self) -> dict | None:
        """{"global_step", "epoch", "step_in_epoch", "history", **metadata} of a usable checkpoint, else None."""
        ckpt = self._load()
        if ckpt is None:
            return None
        where = {k: ckpt["state"][k] for k in ("epoch", "step_in_epoch", "global_step", "history")}
        return {**ckpt.get("metadata", {}), **where}

    def resume_step(self) -> int:
        info = self.resume_info()
        return int(info["global_step"]) if info else 0

    def restore(self, method, optimizer, scheduler) -> TrainState | None:
        ckpt = self._load()
        self._cached = None   # the tensors now live in the model; do not keep a second copy
        if ckpt is None:
            return None
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_states(ckpt["rng"])
        state = TrainState(**ckpt["state"])
        log.info("resuming pretraining from %s at epoch %d step %d (global step %d)",
                 self.path, state.epoch + 1, state.step_in_epoch, state.global_step)
        return state

    def due(self, state: TrainState, epoch_end: bool) -> bool:
        """Every `every_steps` optimizer steps (mid-epoch) and at every epoch end."""
        if epoch_end:
            return True
        return self.every_steps > 0 and state.step_in_epoch > 0 and state.global_step % self.every_steps == 0

    def save(self, method, optimizer, scheduler, state: TrainState) -> None:
        floats = [(name, t) for name, t in method.state_dict().items() if t.is_floating_point()]
        finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).tolist() if floats else []   # one sync
        bad = [name for (name, _), ok in zip(floats, finite) if not ok]
        if bad:
            raise NonFiniteLoss(f"weights became NaN/Inf by step {state.global_step} ({bad[0]}, ...); "
                                "training stopped and the last good checkpoint is kept")
        ckpt = {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng_states(),
            "state": {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
                      "epoch_losses": [float(v) for v in state.epoch_losses],
                      "history": [dict(h) for h in state.history]},
            "metadata": dict(self.metadata),
        }
        try:
            atomic_torch_save(ckpt, self.path)
        except OSError as err:
            kept = f"the previous checkpoint {self.path} is intact" if self.path.exists() else "no checkpoint was kept"
            raise CheckpointWriteError(err.errno, f"writing the checkpoint at step {state.global_step} failed "
                                                  f"({err.strerror or err}); {kept}") from err

    def clear(self) -> None:
        """Remove the checkpoint once the stage's outputs and logging have succeeded."""
        self._cached = None
        self.path.unlink(missing_ok=True)
        self._remove_stale_temps()
