"""DINO against straightforward implementations: the loss is a loop over (teacher view, student view != it)
pairs of the centred, sharpened teacher; the center update is exact; the teacher gets no gradients and
follows the EMA exactly; the last layer gets no update while frozen; schedules; 2 ranks == 1 process."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_core.methods import get_method_class
from ssl_core.training.clock import StepClock
from ssl_core.methods.dino import DINO, dino_loss
from ssl_core.models.backbones import Backbone, ViTTrunk, build_backbone
from ssl_core.models.heads import DINOHead
from ssl_core.training.optim import build_optimizer
from ssl_core.training.loop import train_step

TINY = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "local_crops": 3, "local_crop_size": 8}


def make(**params) -> DINO:
    torch.manual_seed(0)
    backbone = build_backbone("resnet_narrow", 3, 16, width=4)
    return DINO.build(backbone, {**TINY, **params}, image_shape=(3, 16, 16)).train()


def images(n=4):
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def loop_loss(student: list, teacher: list, center, teacher_temp: float, student_temp: float) -> float:
    """DINO's Algorithm 1 as loops: H(t, s) for every teacher view i and student view v != i, batch-averaged."""
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            for b in range(len(s)):
                q = [math.exp((x - c) / teacher_temp) for x, c in zip(t[b], center)]
                logits = [x / student_temp for x in s[b]]
                log_z = math.log(sum(math.exp(x) for x in logits))
                total += -sum(qk / sum(q) * (x - log_z) for qk, x in zip(q, logits)) / len(s)
            pairs += 1
    return total / pairs


def test_loss_equals_a_loop_over_teacher_student_pairs_without_same_view_pairs():
    gen = torch.Generator().manual_seed(0)
    for views, b, k in [(5, 3, 6), (2, 4, 3)]:
        student = torch.randn(views, b, k, generator=gen, dtype=torch.float64)
        teacher = torch.randn(2, b, k, generator=gen, dtype=torch.float64)
        center = torch.randn(k, generator=gen, dtype=torch.float64)
        probs = F.softmax((teacher - center) / 0.04, dim=-1)
        expected = loop_loss(student.tolist(), teacher.tolist(), center.tolist(), 0.04, 0.1)
        assert dino_loss(student, probs, 0.1).item() == pytest.approx(expected, rel=1e-10)
        # the same-view pairs are out: with them the mean would differ
        with_same = (-torch.einsum("tbk,vbk->tv", probs, F.log_softmax(student / 0.1, dim=-1)) / b).mean()
        assert dino_loss(student, probs, 0.1).item() != pytest.approx(with_same.item(), rel=1e-6)


def test_head_is_mlp_then_l2_normalised_bottleneck_then_weight_normalised_layer():
    torch.manual_seed(0)
    head, x = DINOHead(6, 10, hidden_dim=8, bottleneck_dim=4, norm_last_layer=True), torch.randn(3, 6)
    h = head.mlp[4](F.gelu(head.mlp[2](F.gelu(head.mlp[0](x)))))
    h = h / h.norm(dim=1, keepdim=True)
    v, g = head.last_layer.weight_v, head.last_layer.weight_g
    torch.testing.assert_close(head(x), h @ (g * v / v.norm(dim=1, keepdim=True)).T)
    assert not g.requires_grad and torch.equal(g, torch.ones(10, 1))
    assert DINOHead(6, 10, 8, 4, norm_last_layer=False).last_layer.weight_g.requires_grad
    with_bn = DINOHead(6, 10, 8, 4, layers=3, use_bn=True).mlp   # the reference code's use_bn_in_head
    assert [type(m).__name__ for m in with_bn] == ["Linear", "BatchNorm1d", "GELU"] * 2 + ["Linear"]
    m = make(use_bn_in_head=True)
    m.loss(images(), torch.Generator().manual_seed(0))[0].backward()
    assert all(p.grad is not None for p in m.head.parameters() if p.requires_grad)


def test_method_loss_uses_the_centred_sharpened_teacher_on_global_views_and_updates_the_center():
    m, x = make(), images()
    with torch.no_grad():   # make teacher and student differ, and the center non-zero
        for p in list(m.teacher_backbone.parameters()) + list(m.teacher_head.parameters()):
            p.add_(0.05 * torch.randn_like(p))
        m.center.copy_(torch.randn_like(m.center))
    center = m.center.clone()
    loss, extra = m.loss(x, torch.Generator().manual_seed(5))

    views = m.multicrop.views(x, torch.Generator().manual_seed(5))   # replayed: 2 global, 3 local
    assert [v.shape[-1] for v in views] == [16, 16, 8, 8, 8]
    with torch.no_grad():
        feats = torch.cat([m.backbone(torch.cat(views[:2])), m.backbone(torch.cat(views[2:]))])
        student = m.head(feats).double().view(5, 4, -1)
        teacher = m.teacher_head(m.teacher_backbone(torch.cat(views[:2]))).double().view(2, 4, -1)
    expected = loop_loss(student.tolist(), teacher.tolist(), center[0].tolist(), m.teacher_temp, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert extra["teacher_temp"].item() == pytest.approx(0.04)
    # center <- 0.9 center + 0.1 * mean of the teacher's logits over both global views of the batch
    expected_center = center * 0.9 + teacher.reshape(8, -1).mean(dim=0).float() * 0.1
    torch.testing.assert_close(m.center, expected_center, rtol=0, atol=1e-6)
    updated = m.center.clone()
    m.eval()
    m.loss(x, torch.Generator().manual_seed(5))
    assert torch.equal(m.center, updated)   # no update in eval mode


def test_teacher_gets_no_gradients_and_follows_the_ema_exactly():
    m = make()
    m.loss(images(), torch.Generator().manual_seed(0))[0].backward()
    teacher = list(m.teacher_backbone.parameters()) + list(m.teacher_head.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    with torch.no_grad():
        for p in list(m.backbone.parameters()) + list(m.head.parameters()):
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in teacher]
    student = list(m.backbone.parameters()) + list(m.head.parameters())
    m.after_step(0.5)
    mom = 1 - (1 - 0.99) * (math.cos(math.pi * 0.5) + 1) / 2
    assert m.momentum == pytest.approx(mom, abs=1e-15) and m.momentum == pytest.approx(0.995)
    for p_t, p_old, p_s in zip(teacher, old, student):
        assert torch.equal(p_t, p_old * mom + (1 - mom) * p_s)
    m.after_step(1.0)                      # momentum 1: the teacher stops moving
    frozen = [p.clone() for p in teacher]
    m.after_step(1.0)
    assert m.momentum == 1.0 and all(torch.equal(a, b) for a, b in zip(frozen, teacher))


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_last_layer_gets_no_update_while_frozen(norm_last_layer):
    m = make(norm_last_layer=norm_last_layer, freeze_last_layer=1)
    optimizer = build_optimizer(m, "adamw", 0.01, 0.1)   # weight decay must not move it either
    last, first = m.head.last_layer, m.head.mlp[0].weight
    for step, frozen in ((99, True), (100, False)):      # 100 steps per epoch: the last step of epoch 1, the first of 2
        before = [p.detach().clone() for p in last.parameters()], first.detach().clone()
        train_step(m, optimizer, images(), torch.Generator().manual_seed(step), clock=StepClock(step, 100, 1000))
        moved = [not torch.equal(a, b) for a, b in zip(before[0], last.parameters())]
        assert moved == [not frozen, not frozen and not norm_last_layer]   # (weight_v, weight_g)
        assert not torch.equal(before[1], first)


def test_gradients_are_clipped_per_tensor():
    m = make(clip_grad=1e-3, freeze_last_layer=0)
    m.loss(images(), torch.Generator().manual_seed(0))[0].backward()
    raw = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.before_optimizer_step(StepClock(0, 1, 1))
    for name, p in m.named_parameters():
        if name in raw:
            norm = raw[name].norm().item()
            expected = raw[name] * min(1.0, 1e-3 / (norm + 1e-6))
            torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=0, msg=name)
    assert any(raw[n].norm() > 1e-3 for n in raw)   # clipping did act


def test_teacher_temperature_warm_up_and_weight_decay_cosine():
    m = make(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    temps = []
    for epoch in (0, 15, 29.5, 30, 80):
        m.begin_step(StepClock(int(epoch * 10), 10, 1000))
        temps.append(m.teacher_temp)
    assert temps == pytest.approx([0.04, 0.055, 0.0695, 0.07, 0.07])
    factors = [m.optimizer_schedule(StepClock(s, 10, 100))["weight_decay"] for s in (0, 50, 100)]
    assert factors == pytest.approx([1.0, 5.5, 10.0])   # paper: 0.04 -> 0.4 from a base of 0.04


def test_vit_backbone_takes_the_local_crops():
    torch.manual_seed(0)
    backbone = Backbone(ViTTrunk(16, 3, 4, dim=32, depth=2, heads=2), 32, 3, "vit_tiny")
    m = DINO.build(backbone, TINY, image_shape=(3, 16, 16)).train()
    loss, _ = m.loss(images(), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and backbone.trunk.vit.encoder.pos_embedding.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="local_crop_size.*patch size"):
        DINO.build(backbone, {**TINY, "local_crop_size": 3}, image_shape=(3, 16, 16))


def test_knobs_are_validated_by_name(tmp_path):
    for bad, knob in [({"local_crops": -1}, "local_crops"), ({"teacher_temp": 0}, "teacher_temp"),
                      ({"local_crop_scale": (0.5, 0.2)}, "local_crop_scale"), ({"out_dim": 8.5}, "out_dim"),
                      ({"center_momentum": 1.5}, "center_momentum"), ({"clip_grad": -1}, "clip_grad")]:
        with pytest.raises(ValueError, match=f"pretrain.method_params.{knob}"):
            DINO.Params(**bad)
    with pytest.raises(ValueError, match="local_crop_size must be at most the global crop size"):
        make(local_crop_size=20)
    assert DINO.Params(local_crop_scale=[0.1, 0.3]).local_crop_scale == (0.1, 0.3)   # YAML gives lists

    from ssl_pipeline.config.schema import load_params
    from workspace import write_params

    assert get_method_class("dino") is DINO
    write_params(tmp_path, {"pretrain.method": "dino", "pretrain.method_params": {"local_crops": 2}})
    assert load_params(tmp_path / "params.yaml").pretrain.method_params == {"local_crops": 2}
    write_params(tmp_path, {"pretrain.method": "dino", "pretrain.method_params": {"local_crops": -2}})
    with pytest.raises(Exception, match="pretrain.method_params.local_crops"):
        load_params(tmp_path / "params.yaml")


class Stop(Exception):
    pass


def test_a_resumed_run_ends_exactly_as_the_uninterrupted_one(tmp_path):
    """Center (a buffer), teacher temperature (from the step's clock), frozen last layer and weight decay
    (a schedule on the as-built value) all repeat after a restart: stopped at step 5 of 8, resumed from the
    step-3 checkpoint (inside the frozen first epoch) into other initial weights, it ends bitwise equal."""
    from ssl_core.training.checkpoint import Checkpointer
    from ssl_core.training.loop import TrainConfig, pretrain

    x = torch.randint(0, 256, (16, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, weight_decay=0.05, warmup_epochs=1, log_every=1)
    knobs = {"warmup_teacher_temp_epochs": 2}
    straight = make(**knobs)
    pretrain(straight, x, cfg)

    def stop_at_step_5(state, loss):
        if state.global_step == 5:
            raise Stop

    with pytest.raises(Stop):
        pretrain(make(**knobs), x, cfg, on_step=stop_at_step_5, checkpointer=Checkpointer(tmp_path, "fp", every_steps=3))
    torch.manual_seed(7)
    resumed = DINO.build(build_backbone("resnet_narrow", 3, 16, width=4), {**TINY, **knobs}, image_shape=(3, 16, 16))
    pretrain(resumed, x, cfg, checkpointer=Checkpointer(tmp_path, "fp", every_steps=3))
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert resumed.center.abs().sum() > 0 and resumed.teacher_temp == straight.teacher_temp


@pytest.mark.slow
def test_two_ranks_center_and_step_equal_one_process(two_rank_runs):
    """2 steps on 2 gloo ranks == 1 process with the whole batch: losses, student, teacher, and the center
    (averaged over ranks before its EMA)."""
    from two_ranks import assert_two_ranks_match_one_process

    assert_two_ranks_match_one_process("dino", two_rank_runs["dino"])
    assert two_rank_runs["dino"]["state"]["center"].abs().sum() > 0
