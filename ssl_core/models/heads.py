"""Heads: projection/prediction MLPs, DINO's projection head, and the classifier used for probing and fine-tuning."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False,
        last_bias: bool = True) -> nn.Sequential:
    """SimCLR/BYOL-style MLP: (Linear-BN-ReLU) x (layers-1) -> Linear [-> BN]."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=last_bias))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose weight is g * v / ||v|| row by row (weight normalisation, Salimans &
    Kingma 2016), written out so the state_dict keys (weight_g [out, 1], weight_v [out, in]) never depend
    on torch's weight_norm API. g starts at 1; frozen_g keeps it there, so every output is a cosine
    similarity (DINO's norm_last_layer)."""

    def __init__(self, in_dim: int, out_dim: int, frozen_g: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not frozen_g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True))


class DINOHead(nn.Module):
    """DINO's projection head: MLP (Linear [-BN] -GELU x (layers-1) -> Linear to the bottleneck), L2-normalised
    bottleneck, then a weight-normalised linear layer to out_dim logits ("prototypes")."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, layers: int = 3,
                 norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if use_bn else []) + [nn.GELU()]
            dim = hidden_dim
        mods.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp.modules():   # the reference code's init (truncated normal, std 0.02)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, frozen_g=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class Classifier(nn.Module):
    """Backbone + linear head. Input: float images in [0, 1], [B, C, H, W]; output: logits."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
