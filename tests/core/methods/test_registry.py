"""Every registered method: builds on a tiny backbone, trains one step with a finite loss and a
gradient on every trainable parameter, and a state_dict round trip restores the identical loss."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ssl_core.methods import get_method_class, method_names
from ssl_core.models.backbones import Backbone, ViTTrunk, build_backbone

SIZE = 16
# Shrink the heads so a step takes milliseconds; everything else is the method's defaults.
TINY = {"hidden_dim": 16, "projection_dim": 8, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2,
        "num_permutations": 8, "tile_gap": 1, "queue_size": 32}
VARIANTS = [(name, {}) for name in method_names()] + [("moco", {"version": "v3"}),
                                                      ("rotation", {"all_rotations": False})]


def tiny_backbone(family: str | None) -> Backbone:
    if family == "vit":
        return Backbone(ViTTrunk(SIZE, 3, 4, dim=32, depth=2, heads=2), 32, 3, "vit_tiny")
    return build_backbone("resnet_narrow", 3, SIZE, width=4)


def build(name: str, extra: dict, seed: int):
    cls = get_method_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    params = {k: v for k, v in {**TINY, **extra}.items() if k in fields}
    torch.manual_seed(seed)
    return cls.build(tiny_backbone(cls.backbone_family), params, image_shape=(3, SIZE, SIZE)).train()


def test_the_issue_methods_are_registered():
    assert {"simclr", "moco", "byol", "rotation", "jigsaw", "colorization", "mae"} <= set(method_names())


@pytest.mark.parametrize("name,extra", VARIANTS, ids=[f"{n}-{'-'.join(map(str, e.values()))}" for n, e in VARIANTS])
def test_step_and_state_dict_round_trip(name, extra):
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    method = build(name, extra, seed=0)
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.05)
    loss, extras = method.loss(images, torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(torch.is_tensor(v) and v.ndim == 0 for v in extras.values())
    loss.backward()
    unused = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient (DDP would need find_unused_parameters): {unused}"
    before = [p.detach().clone() for p in method.backbone.parameters()]
    optimizer.step()
    method.after_step(0.5)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.backbone.parameters()))

    restored = build(name, extra, seed=1)             # different initial weights ...
    restored.load_state_dict(method.state_dict())     # ... replaced by the checkpoint
    a, _ = method.loss(images, torch.Generator().manual_seed(2))
    b, _ = restored.loss(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert method.describe()["method"] == name
