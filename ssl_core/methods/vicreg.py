"""VICReg (Bardes, Ponce, LeCun 2022): variance-invariance-covariance regularisation; no negatives, no momentum encoder.

Two views -> backbone -> expander (3-layer MLP) -> embeddings z, z' [N, D]. Loss
    invariance_coeff * s(z, z') + variance_coeff * (v(z) + v(z')) / 2 + covariance_coeff * (c(z) + c(z'))
- invariance s: mean squared error between z and z' (over rows and dimensions);
- variance v: mean over dimensions j of max(0, std_target - sqrt(Var(z_j) + variance_eps)), Var unbiased:
  a hinge that keeps every dimension's spread up (against collapse);
- covariance c: the sum of the squared off-diagonal entries of z's covariance matrix (1 / (N - 1)
  normalisation), divided by D: decorrelates the dimensions.
The halving of the variance term and the sum of the covariance terms are the reference code's (the
paper writes both as sums); the coefficients 25, 25, 1 were tuned with it.

All three terms are statistics of the global batch: with several processes the embeddings of every
rank are gathered (gather_with_grad), so every rank computes the one-process loss, and gradients of
the other ranks' rows travel back to their owners.

Recipe: the BYOL colour recipe the paper uses (saturation 0.2) with crops of 20-100 % as the other
methods here at 28-32 px, blur off, and the paper's asymmetric solarisation (0 / 0.2) folded into one
symmetric probability of 0.1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_core.augment import augment_batch
from ssl_core.training.distributed import gather_with_grad
from ssl_core.methods.base import MAX_DIM, SSLMethod, check_floats, check_ints, check_knob
from ssl_core.models.heads import mlp


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened (the reference code's index trick: no mask)."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def variance_term(z: torch.Tensor, eps: float, target: float = 1.0) -> torch.Tensor:
    """Mean over dimensions of the hinge max(0, target - sqrt(unbiased Var + eps))."""
    return F.relu(target - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal covariances, divided by the dimension."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    return off_diagonal(cov).pow(2).sum() / d


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float,
                 target: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(invariance, variance, covariance) of two [N, D] embeddings, before the coefficients."""
    invariance = F.mse_loss(z1, z2)
    variance = (variance_term(z1, eps, target) + variance_term(z2, eps, target)) / 2
    covariance = covariance_term(z1) + covariance_term(z2)
    return invariance, variance, covariance


class VICReg(SSLMethod):
    name = "vicreg"

    @dataclass
    class Params:
        invariance_coeff: float = 25.0    # lambda
        variance_coeff: float = 25.0      # mu
        covariance_coeff: float = 1.0     # nu
        variance_eps: float = 1e-4
        std_target: float = 1.0           # gamma: the hinge's target standard deviation
        hidden_dim: int = 1024            # paper: 8192-8192-8192, scaled to the small encoders
        projection_dim: int = 1024

        def __post_init__(self) -> None:
            check_floats(self, 0, 1e4, "invariance_coeff", "variance_coeff", "covariance_coeff")
            check_knob(0 < self.variance_eps <= 1, "variance_eps", "in (0, 1]", self.variance_eps)
            check_knob(0 < self.std_target <= 100, "std_target", "in (0, 100]", self.std_target)
            check_ints(self, 2, MAX_DIM, "hidden_dim", "projection_dim")

    augment_recipe = {"crop_scale": (0.2, 1.0), "jitter_p": 0.8, "saturation": 0.2, "gray_p": 0.2,
                      "blur_p": 0.0, "solarize_p": 0.1}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        self.projector = mlp(backbone.out_dim, params.hidden_dim, params.projection_dim, layers=3)

    def loss(self, images_u8, gen):
        v1 = augment_batch(images_u8, self.augment, gen)
        v2 = augment_batch(images_u8, self.augment, gen)
        z1, z2 = self.projector(self.backbone(torch.cat([v1, v2]))).chunk(2)
        p = self.params
        with torch.autocast(images_u8.device.type, enabled=False):   # batch statistics in fp32
            z1, z2 = gather_with_grad(z1.float()), gather_with_grad(z2.float())
            inv, var, cov = vicreg_terms(z1, z2, p.variance_eps, p.std_target)
            loss = p.invariance_coeff * inv + p.variance_coeff * var + p.covariance_coeff * cov
        return loss, {"invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}
