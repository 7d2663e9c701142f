"""RotNet (Gidaris et al. 2018): predict which rotation (0/90/180/270 degrees) was applied.

By default every image appears in all four rotations in the same batch (the paper found this best:
the four copies differ only in orientation, so the encoder cannot use any other cue); with
`all_rotations: false` each image gets one rotation drawn from the step's generator (4x cheaper).
Label k means the image was rotated by k * 90 degrees counter-clockwise (torch.rot90 on H, W).
A small MLP head on the pooled backbone features predicts k.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_core.augment import augment_batch
from ssl_core.methods.base import MAX_DIM, SSLMethod, check_ints
from ssl_core.models.heads import mlp


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate square images x [B, C, S, S] by k[i] * 90 degrees counter-clockwise each."""
    every = torch.stack([torch.rot90(x, r, dims=(2, 3)) for r in range(4)], dim=1)   # [B, 4, C, S, S]
    return every[torch.arange(x.shape[0], device=x.device), k]


def rotation_batch(x: torch.Tensor, all_rotations: bool, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and rotation labels: all four per image (image-major order) or one random one each."""
    b = x.shape[0]
    if all_rotations:
        k = torch.arange(4, device=x.device).repeat(b)
        return rotate(x.repeat_interleave(4, dim=0), k), k
    k = torch.randint(4, (b,), generator=gen, device=x.device)
    return rotate(x, k), k


class Rotation(SSLMethod):
    name = "rotation"

    @dataclass
    class Params:
        all_rotations: bool = True
        hidden_dim: int = 512

        def __post_init__(self) -> None:
            check_ints(self, 1, MAX_DIM, "hidden_dim")

    augment_recipe = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        if image_shape[1] != image_shape[2]:
            raise ValueError(f"rotation needs square images, got {image_shape[1]}x{image_shape[2]}")
        self.head = mlp(backbone.out_dim, params.hidden_dim, 4)

    def loss(self, images_u8, gen):
        x = augment_batch(images_u8, self.augment, gen)
        rotated, k = rotation_batch(x, self.params.all_rotations, gen)
        logits = self.head(self.backbone(rotated))
        acc = (logits.detach().argmax(1) == k).float().mean()
        return F.cross_entropy(logits, k), {"acc": acc}
