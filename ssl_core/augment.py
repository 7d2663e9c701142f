"""Batched, per-sample-random image augmentation on the training device.

Input: a uint8 batch [B, C, H, W] sliced from the prepared cache. Output: float32 views in [0, 1],
[B, C, out, out]. Every sample draws its own parameters from the caller's torch.Generator, so
a run is reproducible from its seed and no per-image Python work happens in the hot loop.
Recipes are data (AugmentConfig values), chosen per method and overridden from params.yaml.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.2, 1.0)   # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def with_overrides(self, overrides: dict) -> "AugmentConfig":
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return dataclasses.replace(self, **fixed)


def _uniform(n: int, low: float, high: float, gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def random_resized_crop(x: torch.Tensor, cfg: AugmentConfig, out_size: int, gen, flip: torch.Tensor) -> torch.Tensor:
    """One affine grid-sample for the whole batch: crop box (and flip) per sample."""
    b, device = x.shape[0], x.device
    area = _uniform(b, *cfg.crop_scale, gen, device)
    log_r = _uniform(b, torch.log(torch.tensor(cfg.crop_ratio[0])).item(), torch.log(torch.tensor(cfg.crop_ratio[1])).item(), gen, device)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)   # fractions of the full width/height
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen, device=device) * (1 - w) + w / 2) * 2 - 1   # centre in [-1, 1]
    cy = (torch.rand(b, generator=gen, device=device) * (1 - h) + h / 2) * 2 - 1
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def augment_batch(images_u8: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None,
                  out_size: int | None = None) -> torch.Tensor:
    """Return one augmented float view per image. Same generator state -> identical views."""
    x = images_u8.float().div_(255.0)
    b, c, device = x.shape[0], x.shape[1], x.device
    out_size = out_size or x.shape[-1]
    flip = torch.rand(b, generator=gen, device=device) < cfg.hflip_p
    x = random_resized_crop(x, cfg, out_size, gen, flip)
    jitter = (torch.rand(b, generator=gen, device=device) < cfg.jitter_p).view(b, 1, 1, 1)
    bright = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, gen, device).view(b, 1, 1, 1)
    contr = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, gen, device).view(b, 1, 1, 1)
    jittered = (x * bright).clamp(0, 1)
    mean = _gray(jittered).mean(dim=(1, 2, 3), keepdim=True)
    jittered = ((jittered - mean) * contr + mean).clamp(0, 1)
    x = torch.where(jitter, jittered, x)
    if c == 3:
        gray = (torch.rand(b, generator=gen, device=device) < cfg.gray_p).view(b, 1, 1, 1)
        x = torch.where(gray, _gray(x).expand_as(x), x)
    return x.contiguous()
