"""Starting an encoder from existing weights (pretrain.init): read a state_dict file safely, fit it to
the backbone, adapt the first layer to the data's channel count.

Accepted files: torchvision's own state_dicts (ImageNet weights a user downloaded once, or what
`ssl-pipeline export` writes as encoder_state_dict.pt), this project's models/encoder.pt (keys under
`trunk.`), a classifier's state_dict (keys under `backbone.`), the same behind DistributedDataParallel's
`module.` prefix, or any of them wrapped in a checkpoint dict under "state_dict" / "model". Files are
read with weights_only=True, so nothing in them is unpickled as code.

Fitting is strict: every encoder tensor must come from the file with its exact shape, except
- the classification head (torchvision's fc.* / heads.*, a classifier's head.*), which is dropped;
- BatchNorm's num_batches_tracked counters, which older torchvision files lack (kept at 0);
- the first layer (ResNet conv1, ViT conv_proj) when only its input channels differ: RGB filters are
  summed for 1-channel data (the average x 3, so a gray image gets the response its RGB copy would),
  a 1-channel filter is repeated and divided by the channel count for RGB data.
Anything else that differs is one InitWeightsError naming the keys, so a file for another
architecture never half-loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

HEAD_PREFIXES = ("fc.", "heads.", "head.")         # classification heads: torchvision ResNet, ViT, our Classifier
WRAPPER_PREFIXES = ("module.", "backbone.")        # DDP, our Classifier (stripped, in any order)
CHECKPOINT_KEYS = ("state_dict", "model")          # checkpoint dicts that wrap a state_dict
OPTIONAL_SUFFIX = "num_batches_tracked"
MAX_NAMED = 8                                       # keys named in one error message


class InitWeightsError(ValueError):
    """The weights file cannot initialise this encoder; the message names the keys."""


@dataclass(frozen=True)
class InitReport:
    """What init_backbone loaded: how many tensors, and what it changed on the way (for the log)."""
    loaded: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file (weights_only: no code is unpickled)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InitWeightsError("does not exist") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for foreign or crafted files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InitWeightsError(f"is not a state_dict file that loads with weights_only=True ({first})") from None
    for key in CHECKPOINT_KEYS:
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise InitWeightsError(f"holds a {type(raw).__name__}, not a state_dict (names -> tensors)")
    return {str(k): v for k, v in raw.items()}


def _trunk_prefix(backbone: nn.Module) -> str:
    """Where torchvision's module sits inside ssl_core's Backbone (`trunk.` or `trunk.vit.`)."""
    keys = list(backbone.state_dict())
    return "trunk.vit." if keys and all(k.startswith("trunk.vit.") for k in keys) else "trunk."


def _torchvision_name(key: str) -> str:
    for prefix in ("trunk.vit.", "trunk."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def first_layer_key(backbone: nn.Module) -> str:
    """The state_dict key of the convolution that reads the image (ResNet conv1, ViT conv_proj)."""
    in_channels = getattr(backbone, "in_channels", None)
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d) and (in_channels is None or module.in_channels == in_channels):
            return f"{name}.weight"
    raise InitWeightsError("the encoder has no convolution that reads the image")


def adapt_first_layer(weight: torch.Tensor, in_channels: int) -> tuple[torch.Tensor, str]:
    """A first-layer filter bank [out, C, k, k] for `in_channels` inputs, and what was done."""
    have = weight.shape[1]
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True), f"{have} input channels summed into 1 (the average x {have})"
    if have == 1:
        return weight.repeat(1, in_channels, 1, 1) / in_channels, \
            f"1 input channel repeated over {in_channels} and divided by {in_channels}"
    raise InitWeightsError(f"cannot adapt a first layer of {have} input channels to {in_channels}")


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_NAMED])
    return shown + (f" and {len(keys) - MAX_NAMED} more" if len(keys) > MAX_NAMED else "")


def fit_state_dict(state: Mapping[str, torch.Tensor], backbone: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`state` renamed and adapted to backbone.state_dict()'s keys and shapes, plus notes of what
    changed. Raises InitWeightsError naming every mismatching key (torchvision's names)."""
    expected = backbone.state_dict()
    prefix = _trunk_prefix(backbone)
    fitted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        name = _strip_wrappers(key)
        if name.startswith(HEAD_PREFIXES):
            dropped.append(name)
            continue
        fitted[name if name.startswith(prefix) else prefix + _torchvision_name(name)] = value
    notes = [f"dropped the classification head ({_named(dropped)})"] if dropped else []
    first = first_layer_key(backbone)
    problems = []
    unexpected = sorted(_torchvision_name(k) for k in fitted if k not in expected)
    missing = sorted(_torchvision_name(k) for k in expected if k not in fitted and not k.endswith(OPTIONAL_SUFFIX))
    if unexpected:
        problems.append(f"not in the encoder: {_named(unexpected)}")
    if missing:
        problems.append(f"missing from the file: {_named(missing)}")
    shapes = []
    for key, value in list(fitted.items()):
        want = expected.get(key)
        if want is None or value.shape == want.shape:
            continue
        if key == first and value.dim() == 4 and value.shape[:1] + value.shape[2:] == want.shape[:1] + want.shape[2:]:
            fitted[key], how = adapt_first_layer(value, want.shape[1])
            notes.append(f"first layer {_torchvision_name(key)}: {how}")
            continue
        shapes.append(f"{_torchvision_name(key)} {list(value.shape)} in the file, {list(want.shape)} in the encoder")
    if shapes:
        problems.append(f"shapes differ: {_named(shapes)}")
    if first in fitted and fitted[first].dim() == 4 and fitted[first].shape[-1] != expected[first].shape[-1]:
        problems.append(f"the file's first layer has {fitted[first].shape[-1]}x{fitted[first].shape[-1]} filters, the "
                        f"encoder's {expected[first].shape[-1]}x{expected[first].shape[-1]} (torchvision's ImageNet "
                        "ResNets have the 7x7 stem: pretrain.small_stem false)")
    if problems:
        raise InitWeightsError("; ".join(problems))
    return {k: v for k, v in fitted.items() if k in expected}, notes


def init_backbone(backbone: nn.Module, path: str | Path) -> InitReport:
    """Load the weights file at `path` into `backbone` (in place); see the module docstring."""
    state = read_state_dict(path)
    try:
        fitted, notes = fit_state_dict(state, backbone)
    except InitWeightsError as err:
        raise InitWeightsError(f"does not fit the {getattr(backbone, 'name', '')} encoder: {err}") from None
    backbone.load_state_dict(fitted, strict=False)   # strictness was checked above (counters may be absent)
    return InitReport(loaded=len(fitted), notes=tuple(notes))
