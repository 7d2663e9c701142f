"""A two-view method's loss next to its projections of the same views, recomputed in float64."""
from __future__ import annotations

import torch

from ssl_core.augment import augment_batch


def loss_and_projections(method, images_u8: torch.Tensor, seed: int):
    """(loss, extra metrics, z1, z2): the method's own loss on a batch, and the projector's outputs
    for the two views it drew from the same generator seed (to feed a reference implementation)."""
    loss, extra = method.loss(images_u8, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    views = torch.cat([augment_batch(images_u8, method.augment, gen), augment_batch(images_u8, method.augment, gen)])
    with torch.no_grad():
        z1, z2 = method.projector(method.backbone(views)).double().chunk(2)
    return loss, extra, z1, z2
