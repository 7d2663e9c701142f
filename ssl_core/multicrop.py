"""Multi-crop (Caron et al., SwAV 2020; DINO 2021): views of several sizes from one batch, as a recipe.

A recipe is data: a list of ViewGroups, each `count` views at `size` px made by ssl_core.augment with
the method's AugmentConfig plus the group's own overrides (DINO: 2 global views at the image size, K
local views at a smaller size whose crops cover a smaller area). Every view is one augment_batch call,
so each view of each group draws its own per-sample parameters from the step's generator, in recipe
order: the same generator state gives the same views, and `ssl-pipeline bench` can record and replay
them like any other method's.

encode_views runs a network once per run of consecutive same-size views (a batch must share one
size), as DINO's MultiCropWrapper; BatchNorm statistics are then per size group, as there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ssl_core.augment import AugmentConfig, augment_batch


@dataclass
class ViewGroup:
    count: int                      # views in this group
    size: int                       # their side in pixels
    augment: dict[str, Any] = field(default_factory=dict)   # overrides of the method's AugmentConfig

    def __post_init__(self) -> None:
        if self.count < 0 or self.size < 1:
            raise ValueError(f"a view group needs count >= 0 and size >= 1, got {self.count} views of {self.size} px")


class MultiCrop:
    """A multi-crop recipe bound to a base AugmentConfig (the method's recipe plus pretrain.augment)."""

    def __init__(self, base: AugmentConfig, groups: Sequence[ViewGroup]):
        self.groups = [g for g in groups if g.count > 0]
        self.configs = [base.with_overrides(g.augment) for g in self.groups]

    @property
    def num_views(self) -> int:
        return sum(g.count for g in self.groups)

    def sizes(self) -> list[int]:
        """The side of every view, in the order views() returns them."""
        return [g.size for g in self.groups for _ in range(g.count)]

    def views(self, images_u8: torch.Tensor, gen: torch.Generator | None) -> list[torch.Tensor]:
        """Every view of every group, group by group: float [B, C, size, size] in [0, 1]."""
        return [augment_batch(images_u8, cfg, gen, g.size)
                for g, cfg in zip(self.groups, self.configs) for _ in range(g.count)]


def encode_views(net: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor]) -> torch.Tensor:
    """net applied to every view, one call per run of consecutive same-size views; rows in view order
    ([len(views) * B, D])."""
    outputs, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        outputs.append(net(torch.cat(list(views[start:end]))))
        start = end
    return torch.cat(outputs)
