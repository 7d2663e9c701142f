"""BYOL (Grill et al. 2020): non-contrastive, no negatives.

Online network = backbone + projector + predictor; target network = momentum (EMA) copy of backbone +
projector that never receives gradients. For the two views, the online prediction of one view
regresses the target projection of the other: loss(p, z) = 2 - 2 * cos(p, z), summed over both
directions as in the paper. Target momentum: base_momentum -> 1.0 by cosine over training
(`after_step`). The target network is a submodule, so checkpoints carry it.

Budget: BYOL learns slower than the contrastive methods on small data, so the comparison gives it
more epochs (compare.method_epochs in params.yaml).

Recipe: the standard SimCLR/BYOL colour recipe, except crops cover 50-100 % of the image rather than
20-100 %: BYOL regresses one view's embedding onto the other's, and on 28 px digits a 20 % crop often
keeps too little of the digit to predict from (measured: docs/method-knobs.md). BYOL's asymmetric
solarisation (0 / 0.2 per view) is folded into one symmetric probability of 0.1, and blur is off as
is usual at 32 px.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_core.augment import augment_batch
from ssl_core.methods.base import MAX_DIM, SSLMethod, check_ints
from ssl_core.methods.moco import cosine_momentum, ema_update, frozen_copy
from ssl_core.models.heads import mlp


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 2 - 2 * cos(p_i, z_i); z is treated as a constant target."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


class BYOL(SSLMethod):
    name = "byol"

    @dataclass
    class Params:
        base_momentum: float = 0.9     # paper: 0.996 for long runs; short runs need a fast target
                                       # (docs/method-knobs.md)
        projection_dim: int = 256
        hidden_dim: int = 1024         # paper: 4096, scaled to the small encoders

        def __post_init__(self) -> None:
            if not 0 <= self.base_momentum <= 1:
                raise ValueError(f"pretrain.method_params.base_momentum must be in [0, 1], got {self.base_momentum}")
            check_ints(self, 1, MAX_DIM, "projection_dim", "hidden_dim")

    augment_recipe = {"crop_scale": (0.5, 1.0), "jitter_p": 0.8, "gray_p": 0.2, "blur_p": 0.0, "solarize_p": 0.1}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        self.projector = mlp(backbone.out_dim, params.hidden_dim, params.projection_dim)
        self.predictor = mlp(params.projection_dim, params.hidden_dim, params.projection_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.momentum = params.base_momentum

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_backbone(x))

    def loss(self, images_u8, gen):
        v1 = augment_batch(images_u8, self.augment, gen)
        v2 = augment_batch(images_u8, self.augment, gen)
        views = torch.cat([v1, v2])
        p1, p2 = self.online(views).chunk(2)
        z1, z2 = self.target(views).chunk(2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return loss, {"momentum": torch.tensor(self.momentum, device=loss.device)}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.momentum = cosine_momentum(self.params.base_momentum, progress)
        ema_update(self.target_backbone, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)
