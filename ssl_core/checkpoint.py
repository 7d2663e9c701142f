"""Crash-safe training checkpoints: atomic writes, automatic resume, never a half-written file.

A checkpoint holds the whole method (encoder, heads, momentum encoders, queues), optimizer,
LR scheduler, AMP scaler, RNG states and the position in the epoch. It is written to a temp
file, fsynced and renamed over `last.pt`, so the previous good checkpoint survives any crash
or full disk. Loading uses weights_only=True: nothing is unpickled as code.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from ssl_core.data.cache import atomic_torch_save
from ssl_core.train import TrainState

log = logging.getLogger("ssl_pipeline")


class Checkpointer:
    def __init__(self, directory: Path, fingerprint: str, every_steps: int = 0, scaler=None):
        self.directory = Path(directory)
        self.path = self.directory / "last.pt"
        self.fingerprint = hashlib.sha256(fingerprint.encode()).hexdigest()
        self.every_steps = every_steps
        self.scaler = scaler

    def _load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            ckpt = torch.load(self.path, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint means "start fresh", loudly
            log.warning("checkpoint %s is unreadable (%s); starting from scratch", self.path, err)
            return None
        if ckpt.get("fingerprint") != self.fingerprint:
            log.warning("checkpoint %s belongs to other params; starting from scratch", self.path)
            return None
        return ckpt

    def resume_step(self) -> int:
        ckpt = self._load()
        return int(ckpt["state"]["global_step"]) if ckpt else 0

    def restore(self, method, optimizer, scheduler) -> TrainState | None:
        ckpt = self._load()
        if ckpt is None:
            return None
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        state = TrainState(**ckpt["state"])
        log.info("resuming pretraining from %s at epoch %d step %d (global step %d)",
                 self.path, state.epoch + 1, state.step_in_epoch, state.global_step)
        return state

    def maybe_save(self, method, optimizer, scheduler, state: TrainState, epoch_end: bool) -> bool:
        due = epoch_end or (self.every_steps > 0 and state.global_step % self.every_steps == 0 and state.step_in_epoch > 0)
        if not due:
            return False
        self.save(method, optimizer, scheduler, state)
        return True

    def save(self, method, optimizer, scheduler, state: TrainState) -> None:
        ckpt = {
            "fingerprint": self.fingerprint,
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "state": {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step},
        }
        atomic_torch_save(ckpt, self.path)

    def clear(self) -> None:
        """Remove the checkpoint once the stage's outputs are safely written."""
        self.path.unlink(missing_ok=True)
