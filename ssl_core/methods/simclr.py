"""SimCLR (Chen et al. 2020): two augmented views, projection MLP, NT-Xent loss.

Negatives are gathered across processes when distributed, with gradients routed back to their owner.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_core.augment import augment_batch
from ssl_core.training.distributed import gather_with_grad, rank
from ssl_core.methods.base import MAX_DIM, SSLMethod, check_ints, check_temperatures
from ssl_core.models.heads import mlp


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the global batch. z1, z2: [B, D] local projections of the two views.

    Row i of view 1 is positive with row i of view 2; all other 2N-2 rows are negatives.
    Returns the mean over the 2B local anchors (equal to the 1-process loss when ranks' losses are averaged).
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    b = z1.shape[0]
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    n = all1.shape[0]
    offset = rank() * b
    keys = torch.cat([all1, all2], dim=0)                      # [2N, D]
    anchors = torch.cat([z1, z2], dim=0)                        # [2B, D]
    logits = anchors @ keys.T / temperature                     # [2B, 2N]
    local = torch.arange(b, device=z1.device) + offset
    self_idx = torch.cat([local, local + n])
    pos_idx = torch.cat([local + n, local])
    logits[torch.arange(2 * b, device=z1.device), self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)


class SimCLR(SSLMethod):
    name = "simclr"

    @dataclass
    class Params:
        temperature: float = 0.2
        projection_dim: int = 128
        hidden_dim: int = 512

        def __post_init__(self) -> None:
            check_temperatures(self, "temperature")
            check_ints(self, 1, MAX_DIM, "projection_dim", "hidden_dim")

    augment_recipe = {"crop_scale": (0.2, 1.0), "jitter_p": 0.8, "gray_p": 0.2, "blur_p": 0.0}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        self.projector = mlp(backbone.out_dim, params.hidden_dim, params.projection_dim)

    def loss(self, images_u8, gen):
        v1 = augment_batch(images_u8, self.augment, gen)
        v2 = augment_batch(images_u8, self.augment, gen)
        z = self.projector(self.backbone(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.params.temperature), {}
