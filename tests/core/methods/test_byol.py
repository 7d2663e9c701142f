"""BYOL: the target network gets no gradients; the loss is 2 - 2 cos, summed over both directions."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_core.augment import augment_batch
from ssl_core.methods.byol import BYOL, byol_loss
from ssl_core.models.backbones import build_backbone


def make():
    torch.manual_seed(0)
    backbone = build_backbone("resnet_narrow", 3, 16, width=4)
    return BYOL.build(backbone, {"hidden_dim": 16, "projection_dim": 8}, image_shape=(3, 16, 16)).train()


def images(n=4):
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def two_minus_two_cos(p, z):
    total = 0.0
    for u, v in zip(p.tolist(), z.tolist()):
        dot = sum(a * b for a, b in zip(u, v))
        total += 2 - 2 * dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))
    return total / len(p)


def test_byol_loss_is_two_minus_two_cos():
    gen = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 7, generator=gen, dtype=torch.float64), torch.randn(5, 7, generator=gen, dtype=torch.float64)
    assert byol_loss(p, z).item() == pytest.approx(two_minus_two_cos(p, z), rel=1e-12)
    assert byol_loss(z * 3, z).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(-z, z).item() == pytest.approx(4.0)


def test_method_loss_equals_hand_computed_symmetric_loss():
    m, x = make(), images()
    loss, _ = m.loss(x, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    views = torch.cat([augment_batch(x, m.augment, gen), augment_batch(x, m.augment, gen)])
    with torch.no_grad():
        p1, p2 = m.predictor(m.projector(m.backbone(views))).chunk(2)
        z1, z2 = m.target_projector(m.target_backbone(views)).chunk(2)
    expected = two_minus_two_cos(p1, z2) + two_minus_two_cos(p2, z1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_target_gets_no_gradients_online_does():
    m = make()
    loss, _ = m.loss(images(), torch.Generator().manual_seed(0))
    loss.backward()
    target = list(m.target_backbone.parameters()) + list(m.target_projector.parameters())
    assert all(not p.requires_grad and p.grad is None for p in target)
    for net in (m.backbone, m.projector, m.predictor):
        assert all(p.grad is not None for p in net.parameters())


def test_target_is_momentum_average_of_online():
    m = make()
    with torch.no_grad():
        for p in m.projector.parameters():
            p.add_(1.0)
    old = [p.clone() for p in m.target_projector.parameters()]
    m.after_step(0.0)                               # progress 0: momentum = base
    mom = m.params.base_momentum
    for p_t, p_old, p_o in zip(m.target_projector.parameters(), old, m.projector.parameters()):
        assert torch.equal(p_t, p_old * mom + (1 - mom) * p_o)
    m.after_step(1.0)                               # progress 1: momentum 1, target frozen
    frozen = [p.clone() for p in m.target_projector.parameters()]
    m.after_step(1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, m.target_projector.parameters()))
