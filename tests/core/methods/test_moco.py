"""MoCo: FIFO queue with the right keys, enqueue only in training, exact momentum update, losses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_core.augment import augment_batch
from ssl_core.methods.moco import MoCo, cosine_momentum, queue_infonce
from ssl_core.models.backbones import build_backbone


def make(version="v2", **params):
    torch.manual_seed(0)
    backbone = build_backbone("resnet_narrow", 3, 16, width=4)
    return MoCo.build(backbone, {"version": version, "hidden_dim": 16, "projection_dim": 8, **params},
                      image_shape=(3, 16, 16))


def images(n=4, seed=0):
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_queue_is_fifo_and_pointer_wraps():
    m = make(queue_size=10)
    pushed = []
    for step in range(5):                       # 5 pushes of 4 keys: pointer passes the end twice
        keys = F.normalize(torch.randn(4, 8), dim=1)
        pushed.append(keys)
        m.enqueue(keys)
        assert int(m.queue_ptr) == (4 * (step + 1)) % 10
    assert torch.equal(m.queue_in_order(), torch.cat(pushed)[-10:])
    m.enqueue(big := F.normalize(torch.randn(13, 8), dim=1))   # more keys than slots: newest 10 survive
    assert torch.equal(m.queue_in_order(), big[-10:])


def test_training_step_enqueues_both_views_keys_in_order():
    m = make(queue_size=24, bn_splits=1).train()
    x = images()
    before = m.queue_in_order().clone()
    m.loss(x, torch.Generator().manual_seed(3))
    # Replay the views from the same generator and compute the keys by hand.
    gen = torch.Generator().manual_seed(3)
    v1, v2 = augment_batch(x, m.augment, gen), augment_batch(x, m.augment, gen)
    with torch.no_grad():
        keys = F.normalize(m.momentum_projector(m.momentum_backbone(torch.cat([v1, v2]))), dim=1)
    assert int(m.queue_ptr) == 8
    torch.testing.assert_close(m.queue_in_order()[-8:], keys)
    assert torch.equal(m.queue_in_order()[:-8], before[8:])    # the 8 oldest were dropped


def test_no_enqueue_in_eval_mode():
    m = make(queue_size=16).eval()
    queue, ptr = m.queue.clone(), m.queue_ptr.clone()
    m.loss(images(), torch.Generator().manual_seed(0))
    assert torch.equal(m.queue, queue) and torch.equal(m.queue_ptr, ptr)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_momentum_update_is_exact(version):
    m = make(version, base_momentum=0.9)
    with torch.no_grad():                        # make online and momentum weights differ
        for p in list(m.backbone.parameters()) + list(m.projector.parameters()):
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in list(m.momentum_backbone.parameters()) + list(m.momentum_projector.parameters())]
    online = list(m.backbone.parameters()) + list(m.projector.parameters())
    m.after_step(0.25)
    mom = 1 - (1 - 0.9) * (math.cos(math.pi * 0.25) + 1) / 2
    assert m.momentum == pytest.approx(mom, abs=1e-15)
    new = list(m.momentum_backbone.parameters()) + list(m.momentum_projector.parameters())
    for p_k, p_old, p_q in zip(new, old, online):
        assert torch.equal(p_k, p_old * mom + (1 - mom) * p_q)


def test_momentum_schedule_endpoints():
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 1.0) == 1.0


def test_momentum_encoder_gets_no_gradient_and_is_checkpointed():
    m = make().train()
    loss, _ = m.loss(images(), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in m.momentum_backbone.parameters())
    assert any(p.grad is not None for p in m.backbone.parameters())
    keys = m.state_dict().keys()
    assert {"queue", "queue_ptr"} <= set(keys) and any(k.startswith("momentum_backbone.") for k in keys)


def test_queue_infonce_matches_loop():
    gen = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(3, 5, generator=gen, dtype=torch.float64), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    tau, total = 0.2, 0.0
    for i in range(3):
        logits = [float(q[i] @ k[i]) / tau] + [float(q[i] @ queue[j]) / tau for j in range(6)]
        total += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert queue_infonce(q, k, queue, tau).item() == pytest.approx(total / 3, rel=1e-12)


def test_v3_has_no_queue_and_a_predictor():
    m = make("v3").train()
    assert not hasattr(m, "queue") and hasattr(m, "predictor")
    loss, _ = m.loss(images(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_unknown_version_is_refused():
    with pytest.raises(ValueError, match="v2"):
        make("v4")
