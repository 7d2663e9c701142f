"""An encoder's architecture as data (stored beside its weights), and building or loading it."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssl_core.models.backbones import build_backbone


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder architecture (stored beside its weights)."""
    backbone: str
    in_channels: int
    image_size: int
    small_stem: bool
    stem_stride: int
    width: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderSpec":
        """From encoder.json (extra keys such as run_id are ignored; old files lack stem_stride)."""
        return cls(backbone=data["backbone"], in_channels=int(data["in_channels"]), image_size=int(data["image_size"]),
                   small_stem=bool(data["small_stem"]), stem_stride=int(data.get("stem_stride", 1)),
                   width=int(data["width"]), method=data.get("method", ""))


def build_encoder(spec: EncoderSpec) -> torch.nn.Module:
    return build_backbone(spec.backbone, spec.in_channels, spec.image_size, spec.small_stem, spec.width,
                          spec.stem_stride)


def load_encoder(spec_json: Path, weights: Path) -> tuple[torch.nn.Module, EncoderSpec]:
    """An encoder saved as (spec JSON, state_dict file); weights_only, so nothing is unpickled as code."""
    spec = EncoderSpec.from_dict(json.loads(Path(spec_json).read_text()))
    encoder = build_encoder(spec)
    encoder.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    return encoder, spec
