"""Hand-made evaluation data: a fixed flat 'encoder' and a linearly separable two-class split."""
from __future__ import annotations

import torch
from torch import nn

from ssl_core.data.cache import Split


class Flat(nn.Module):
    """A fixed 'encoder': flattened pixels (so the probe's job is plain logistic regression)."""

    def __init__(self, dim):
        super().__init__()
        self.out_dim = dim
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.flatten(1) * self.scale


def separable_split(n, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, 1, 4, 4), generator=gen, dtype=torch.uint8)
    images[labels == 1, :, :2, :] += 150   # class 1: bright top half
    return Split(images, labels)
