"""Per-rank script for the 2-rank tests of the global-statistics methods (tests/methods/test_{dino,vicreg,
barlow_twins}.py), run under torchrun by ssl_core.training.launch (gloo, CPU):

    methods_dist_worker.py OUT    every rank trains each method of METHOD_PARAMS for 2 steps through the
                                  real loop (DDP, sharded batches) on its half of the global batch;
                                  rank 0 saves the losses and final state_dicts to OUT

The test process calls two_steps() itself for the one-process reference: same seeds, same models.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import torch
import torch.nn.functional as F

from dist_worker import without_batchnorm
from ssl_core.training import distributed as dist_utils

GLOBAL_BATCH, IMAGES, SIZE = 8, 12, 16   # 1 step per epoch (drop_last), 2 epochs
METHOD_PARAMS = {
    # freeze_last_layer 0 and a small clip: the last layer moves and clipping acts in the compared steps
    "dino": {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "local_crops": 2, "local_crop_size": 8,
             "freeze_last_layer": 0, "clip_grad": 0.05, "base_momentum": 0.9, "warmup_teacher_temp_epochs": 1},
    "vicreg": {"hidden_dim": 16, "projection_dim": 8},
    "barlow_twins": {"hidden_dim": 16, "projection_dim": 8},
}
VIEW_MODULES = ("ssl_core.multicrop", "ssl_core.methods.vicreg", "ssl_core.methods.barlow_twins")


def tiny_method(name: str) -> torch.nn.Module:
    """BatchNorm swapped for per-sample GroupNorm (per-rank batch statistics would differ from the
    whole batch's), in the backbone before the method copies it (DINO's teacher) and in the heads."""
    from ssl_core.methods import get_method_class
    from ssl_core.models import build_backbone

    torch.manual_seed(0)
    backbone = without_batchnorm(build_backbone("resnet_narrow", 3, SIZE, True, 4, 2))
    return without_batchnorm(get_method_class(name).build(backbone, METHOD_PARAMS[name], {}, (3, SIZE, SIZE)))


def tiny_images() -> torch.Tensor:
    return torch.randint(0, 256, (IMAGES, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@contextlib.contextmanager
def fixed_views() -> Iterator[None]:
    """augment_batch replaced by per-sample deterministic views (a different one per call, resized to the
    call's out_size): the real ones draw from a per-rank generator, so the two setups would differ."""
    import importlib

    modules = [importlib.import_module(m) for m in VIEW_MODULES]
    calls = {"n": 0}

    def view(images_u8, cfg, gen=None, out_size=None):
        x = images_u8.float() / 255
        x = (x, x.flip(-1) * 0.8 + 0.1, x.flip(-2) * 0.6 + 0.3)[calls["n"] % 3]
        calls["n"] += 1
        if out_size and out_size != x.shape[-1]:
            x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False)
        return x

    saved = [m.augment_batch for m in modules]
    for m in modules:
        m.augment_batch = view
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m.augment_batch = original


def two_steps(name: str) -> dict:
    """Two optimizer steps of `name` through the real training loop (sharding, DDP when distributed)."""
    from ssl_core.training.loop import TrainConfig, pretrain

    method = tiny_method(name)
    cfg = TrainConfig(epochs=2, batch_size=GLOBAL_BATCH, optimizer="sgd", lr=0.05, weight_decay=1e-3,
                      warmup_epochs=0, seed=3, device="cpu", log_every=1)
    with fixed_views():
        history = pretrain(method, tiny_images(), cfg)
    return {"losses": [h["loss"] for h in history],
            "state": {k: v.detach().clone() for k, v in method.state_dict().items()}}


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    dist_utils.init_from_env("cpu")
    try:
        results = {name: two_steps(name) for name in METHOD_PARAMS}
        if dist_utils.rank() == 0:
            torch.save(results, argv[0])
    finally:
        dist_utils.shutdown()


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)(sys.argv[1:])
