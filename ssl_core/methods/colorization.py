"""Colorization (Zhang, Isola, Efros 2016): see only lightness, predict colour.

Images are converted from sRGB to CIE Lab (D65, in torch below). The encoder gets L / 100 repeated on
every input channel (the backbone is built with the data's 3 channels, so the exported encoder still
takes RGB images; at evaluation time it sees colour, at pretraining time grey). A 1x1-conv head on
the encoder's spatial feature map (layer4 of a ResNet, the patch grid of a ViT) predicts, for every
cell of that map, a distribution over quantised ab bins.

Classification, not regression, and why: colour is multimodal (a shirt may be red or blue); an L2
regression is minimised by the mean, a desaturated grey-brown, so it pays to hedge instead of
recognising the object. Cross-entropy over bins keeps the modes, which is what makes the task a
semantic one (Zhang et al. sec. 2.1). The ab plane [-110, 110)^2 is cut into bin_size x bin_size
squares (22 x 22 = 484 classes at the paper's 10); the target of a feature-map cell is the histogram
of its pixels' bins (a soft target, so downsampling never averages colours into grey). The paper's
class rebalancing is left out: it makes output images more vivid, not the encoder better.

Grayscale data would give all-zero ab targets: `build` refuses 1-channel data, and the first batch
is checked -- if every pixel has R == G == B, a ValueError says so instead of training on zeros.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.augment import augment_batch
from ssl_core.methods.base import MAX_DIM, SSLMethod, check_ints
from ssl_core.models.backbones import feature_map

_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_D65_WHITE = (0.95047, 1.0, 1.08883)
AB_RANGE = 110.0


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], [B, 3, H, W] -> Lab [B, 3, H, W] (L in [0, 100], a/b roughly [-110, 110])."""
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(_D65_WHITE, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear) / white
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def ab_bins(ab: torch.Tensor, bin_size: float) -> tuple[torch.Tensor, int]:
    """ab [B, 2, H, W] -> (bin index [B, H, W], number of bins); bins are row-major over (a, b)."""
    per_axis = int(round(2 * AB_RANGE / bin_size))
    q = ((ab + AB_RANGE) / bin_size).floor().long().clamp(0, per_axis - 1)
    return q[:, 0] * per_axis + q[:, 1], per_axis * per_axis


def cell_histograms(bins: torch.Tensor, num_bins: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """Per-pixel bins [B, H, W] -> per-cell bin frequencies [B, num_bins, h, w] (each cell sums to 1)."""
    b, height, width = bins.shape
    h, w = out_hw
    cy = torch.arange(height, device=bins.device) * h // height
    cx = torch.arange(width, device=bins.device) * w // width
    cell = (cy[:, None] * w + cx[None, :]).expand(b, -1, -1)
    counts = torch.zeros(b, h * w * num_bins, device=bins.device)
    counts.scatter_add_(1, (cell * num_bins + bins).reshape(b, -1), torch.ones(b, height * width, device=bins.device))
    counts = counts.view(b, h, w, num_bins).permute(0, 3, 1, 2)
    return counts / counts.sum(dim=1, keepdim=True)


def is_grayscale(images: torch.Tensor) -> bool:
    return images.shape[1] == 1 or bool(((images[:, 0] == images[:, 1]) & (images[:, 1] == images[:, 2])).all())


class Colorization(SSLMethod):
    name = "colorization"
    requires_color = True

    @dataclass
    class Params:
        bin_size: float = 10.0          # ab quantisation step (paper: 10)
        hidden_dim: int = 256

        def __post_init__(self) -> None:
            if not 1 <= self.bin_size <= 2 * AB_RANGE:
                raise ValueError(f"pretrain.method_params.bin_size must be in [1, 220], got {self.bin_size}")
            check_ints(self, 1, MAX_DIM, "hidden_dim")

    # No grayscale augmentation: it would turn targets into zeros.
    augment_recipe = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        if augment.gray_p > 0:
            raise ValueError("colorization: pretrain.augment.gray_p must be 0 (grey views have no colour to predict)")
        _, self.num_bins = ab_bins(torch.zeros(1, 2, 1, 1), params.bin_size)
        self.head = nn.Sequential(
            nn.Conv2d(backbone.out_dim, params.hidden_dim, 1, bias=False), nn.BatchNorm2d(params.hidden_dim),
            nn.ReLU(inplace=True), nn.Conv2d(params.hidden_dim, self.num_bins, 1))
        self._colour_checked = False

    def targets(self, lab: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        bins, _ = ab_bins(lab[:, 1:], self.params.bin_size)
        return cell_histograms(bins, self.num_bins, out_hw)

    def loss(self, images_u8, gen):
        if not self._colour_checked:
            if is_grayscale(images_u8):
                raise ValueError("colorization: the images are grayscale (R == G == B in every pixel), so there is "
                                 "no colour to predict. Use colour data or another pretrain.method.")
            self._colour_checked = True
        lab = rgb_to_lab(augment_batch(images_u8, self.augment, gen))
        lightness = (lab[:, :1] / 100).expand(-1, self.backbone.in_channels, -1, -1)
        logits = self.head(feature_map(self.backbone, lightness))
        target = self.targets(lab, tuple(logits.shape[-2:]))
        acc = (logits.detach().argmax(1) == target.argmax(1)).float().mean()
        return F.cross_entropy(logits, target), {"acc": acc}
