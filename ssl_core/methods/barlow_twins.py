"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of two views' embeddings is pushed to the identity.

Two views -> backbone -> projector (3-layer MLP, last layer without bias) -> z, z' [N, D]. Each is
standardised per dimension over the batch (BatchNorm without affine parameters: biased variance,
eps 1e-5), C = z_std^T z'_std / N is their D x D cross-correlation, and the loss is
    sum_i (1 - C_ii)^2 + off_diagonal_weight * sum_{i != j} C_ij^2
(invariance on the diagonal, redundancy reduction off it).

Distributed: the standardisation and C are statistics of the global batch. Every rank gathers all
ranks' embeddings with gradient (gather_with_grad) and computes the one-process loss; the gather's
backward sums each row's gradient from every rank, and DDP's average over ranks then yields exactly
the one-process gradient. (Standardising per rank, or summing per-rank C without routing the gradient
back, gives a different loss or a gradient scaled by the number of processes: the 2-rank test guards
both.)

Dimensions: the paper's projector is 8192 wide; here it is scaled to the demo's small batches (see Params).

Recipe: as VICReg here (BYOL colour recipe, crops of 20-100 %, blur off, solarisation 0.1 on both views).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_core.augment import augment_batch
from ssl_core.training.distributed import gather_with_grad
from ssl_core.methods.base import MAX_DIM, SSLMethod, check_floats, check_ints
from ssl_core.methods.vicreg import off_diagonal
from ssl_core.models.heads import mlp

BN_EPS = 1e-5   # the reference code's nn.BatchNorm1d(affine=False) default


def batch_standardize(z: torch.Tensor, eps: float = BN_EPS) -> torch.Tensor:
    """Per-dimension (z - mean) / sqrt(biased Var + eps) over the rows: training-mode BatchNorm, no affine."""
    mean = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """[D, D] empirical cross-correlation of the batch-standardised embeddings."""
    return batch_standardize(z1).T @ batch_standardize(z2) / z1.shape[0]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, off_diagonal_weight: float) -> torch.Tensor:
    c = cross_correlation(z1, z2)
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = off_diagonal(c).pow(2).sum()
    return on + off_diagonal_weight * off


class BarlowTwins(SSLMethod):
    name = "barlow_twins"

    @dataclass
    class Params:
        off_diagonal_weight: float = 5e-3   # lambda
        # paper: 8192-8192-8192 at batch 2048. A batch's cross-correlation has rank at most the batch size, so
        # at the demo's batches (32-64) most of a wide one is out of reach: wide projectors learned little there
        hidden_dim: int = 512
        projection_dim: int = 128

        def __post_init__(self) -> None:
            check_floats(self, 0, 1000, "off_diagonal_weight")
            check_ints(self, 2, MAX_DIM, "hidden_dim", "projection_dim")

    augment_recipe = {"crop_scale": (0.2, 1.0), "jitter_p": 0.8, "saturation": 0.2, "gray_p": 0.2,
                      "blur_p": 0.0, "solarize_p": 0.1}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        self.projector = mlp(backbone.out_dim, params.hidden_dim, params.projection_dim, layers=3, last_bias=False)

    def loss(self, images_u8, gen):
        v1 = augment_batch(images_u8, self.augment, gen)
        v2 = augment_batch(images_u8, self.augment, gen)
        z1, z2 = self.projector(self.backbone(torch.cat([v1, v2]))).chunk(2)
        with torch.autocast(images_u8.device.type, enabled=False):   # D x D statistics in fp32
            z1, z2 = gather_with_grad(z1.float()), gather_with_grad(z2.float())
            return barlow_twins_loss(z1, z2, self.params.off_diagonal_weight), {}
