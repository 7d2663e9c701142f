"""Per-rank script for tests/core/training/test_distributed.py, run under torchrun by ssl_core.training.launch (gloo, CPU).

    dist_worker.py equivalence OUT CKPT   every rank takes ONE pretraining step (SimCLR, then MoCo v2) on
                                          its half of the global batch, then resumes SimCLR from the
                                          1-process checkpoint in CKPT for its 2nd epoch; rank 0 saves
                                          losses, weights, queue to OUT
    dist_worker.py fail              rank 1 raises on a bad input while rank 0 waits in a collective
    dist_worker.py hang              rank 1 never joins the collective rank 0 waits in

The test process imports the same helpers (tiny_method, fixed_views, ...) to compute the
single-process reference, so both sides build identical models from identical seeds.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ssl_core.training import distributed as dist_utils

GLOBAL_BATCH = 8
IMAGES = 12          # 1 step per epoch (drop_last): the step uses 8 of the 12 images, shuffled
SIZE = 16
METHOD_PARAMS = {
    "simclr": {"temperature": 0.5, "projection_dim": 8, "hidden_dim": 16},
    # bn_splits 1: no shuffle-BN permutation, which would draw from the (rank-dependent) generator
    "moco": {"version": "v2", "queue_size": 24, "projection_dim": 8, "hidden_dim": 16, "bn_splits": 1},
}


def without_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm couples the samples of a batch (per-rank statistics differ from global ones);
    GroupNorm(1, C) normalises each sample alone, so the split batch is exactly the whole batch."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            norm = nn.GroupNorm(1, child.num_features, affine=child.affine)
            if child.affine:   # a frozen copy's norm (DINO's teacher head) stays frozen
                norm.requires_grad_(child.weight.requires_grad)
            setattr(module, name, norm)
        else:
            without_batchnorm(child)
    return module


def tiny_method(name: str) -> nn.Module:
    from ssl_core.methods import get_method_class
    from ssl_core.models import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("resnet_narrow", 3, SIZE, True, 4, 2)
    method = get_method_class(name).build(backbone, METHOD_PARAMS[name], {}, (3, SIZE, SIZE))
    without_batchnorm(method)
    if name == "moco":   # momentum encoders were copied before the swap: equal and frozen again
        for online, momentum in ((method.backbone, method.momentum_backbone), (method.projector, method.momentum_projector)):
            momentum.load_state_dict(online.state_dict())
            momentum.requires_grad_(False)
    return method


def tiny_images() -> torch.Tensor:
    return torch.randint(0, 256, (IMAGES, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@contextlib.contextmanager
def fixed_views() -> Iterator[None]:
    """Augmentation replaced by two fixed, per-sample views (identity; flipped and dimmed), used in
    turn. The real augmentations draw from a per-rank generator, so the two setups would otherwise
    see different views of the same images."""
    import ssl_core.methods.moco as moco
    import ssl_core.methods.simclr as simclr

    calls = {"n": 0}

    def view(images_u8, cfg, gen=None, *args, **kwargs):
        x = images_u8.float() / 255
        calls["n"] += 1
        return x if calls["n"] % 2 else x.flip(-1) * 0.8 + 0.1

    saved = simclr.augment_batch, moco.augment_batch
    simclr.augment_batch = moco.augment_batch = view
    try:
        yield
    finally:
        simclr.augment_batch, moco.augment_batch = saved


def one_step(name: str) -> dict:
    """One optimizer step of `name` through the real training loop (sharding, DDP when distributed)."""
    from ssl_core.training.loop import TrainConfig, pretrain

    method = tiny_method(name)
    cfg = TrainConfig(epochs=1, batch_size=GLOBAL_BATCH, optimizer="sgd", lr=0.5, weight_decay=0.0,
                      warmup_epochs=0, seed=3, device="cpu", log_every=1)
    with fixed_views():
        history = pretrain(method, tiny_images(), cfg)
    state = {k: v.detach().clone() for k, v in method.state_dict().items()}
    return {"loss": history[0]["loss"], "state": state}


class EpochOneCheckpointer:
    """A real Checkpointer that saves only at the end of epoch 1 (the state a 2-epoch run resumes from)."""

    def __init__(self, directory: Path):
        from ssl_core.training.checkpoint import Checkpointer

        self.inner = Checkpointer(directory, fingerprint="dist-test")

    def restore(self, method, optimizer, scheduler):
        return self.inner.restore(method, optimizer, scheduler)

    def due(self, state, epoch_end: bool) -> bool:
        return epoch_end and state.epoch == 1

    def save(self, *args) -> None:
        self.inner.save(*args)


def two_epochs(checkpointer) -> dict:
    """SimCLR for 2 epochs of one step each; with a checkpointer holding epoch 1, only epoch 2 runs."""
    from ssl_core.training.loop import TrainConfig, pretrain

    method = tiny_method("simclr")
    cfg = TrainConfig(epochs=2, batch_size=GLOBAL_BATCH, optimizer="sgd", lr=0.5, weight_decay=0.0,
                      warmup_epochs=0, seed=3, device="cpu", log_every=1)
    with fixed_views():
        history = pretrain(method, tiny_images(), cfg, checkpointer=checkpointer)
    return {"loss": history[-1]["loss"], "epochs": len(history),
            "state": {k: v.detach().clone() for k, v in method.state_dict().items()}}


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    mode = argv[0]
    dist_utils.init_from_env("cpu")
    rank = dist_utils.rank()
    try:
        if mode == "equivalence":
            from ssl_core.recipes.distributed import RankZeroCheckpointer

            results = {name: one_step(name) for name in ("simclr", "moco")}
            # resume from a 1-process checkpoint: rank 0 reads it, rank 1 gets it by broadcast
            lead = EpochOneCheckpointer(Path(argv[2])).inner if rank == 0 else None
            results["resumed"] = two_epochs(RankZeroCheckpointer(lead))
            if rank == 0:
                torch.save(results, Path(argv[1]))
        elif mode == "fail":
            if rank == 1:
                raise ValueError("rank 1 got a bad input batch")
            torch.distributed.all_reduce(torch.ones(1))
        elif mode == "hang":
            if rank == 1:
                time.sleep(3600)
            torch.distributed.all_reduce(torch.ones(1))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        dist_utils.shutdown()


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)(sys.argv[1:])
