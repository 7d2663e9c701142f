"""The trainer's generic per-step hooks (SSLMethod.optimizer_schedule, begin_step, before_optimizer_step,
after_step): called in order, with the right clock, through the real loop; schedules scale the
as-built optimizer settings; per-tensor gradient clipping equals its definition."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssl_core.methods.base import SSLMethod
from ssl_core.training.clock import StepClock
from ssl_core.training.optim import apply_schedule, build_optimizer, clip_grad_per_tensor, group_hyperparameters
from ssl_core.training.loop import TrainConfig, pretrain

SIZE = 4


class Probe(SSLMethod):
    """An unregistered method (no name) that records what each hook sees."""

    def __init__(self):
        backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 4))
        super().__init__(backbone, None, None, (3, SIZE, SIZE))
        self.events: list[tuple] = []

    def loss(self, images_u8, gen):
        self.events.append(("loss",))
        return self.backbone(images_u8.float() / 255).pow(2).mean(), {}

    def optimizer_schedule(self, clock):
        self.events.append(("schedule", clock))
        return {"weight_decay": 1.0 + clock.step}

    def begin_step(self, clock):
        self.weights_at_begin = [p.detach().clone() for p in self.parameters()]
        self.events.append(("begin", clock, [g["weight_decay"] for g in self.optimizer.param_groups]))

    def before_optimizer_step(self, clock):
        grads = all(p.grad is not None for p in self.parameters())
        untouched = all(torch.equal(a, b) for a, b in zip(self.weights_at_begin, self.parameters()))
        self.events.append(("before_optimizer_step", clock, grads, untouched))

    def after_step(self, progress):
        self.events.append(("after", progress))


def test_hooks_run_in_order_with_the_steps_clock(monkeypatch):
    import ssl_core.training.loop as train_module

    probe = Probe()
    real_build = train_module.build_optimizer

    def keep(model, *args):   # the probe reads the loop's optimizer
        probe.optimizer = real_build(model, *args)
        return probe.optimizer

    monkeypatch.setattr(train_module, "build_optimizer", keep)
    images = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pretrain(probe, images, TrainConfig(epochs=2, batch_size=4, weight_decay=0.1, optimizer="adamw"))
    kinds = [e[0] for e in probe.events]
    assert kinds == ["schedule", "begin", "loss", "before_optimizer_step", "after"] * 4
    clocks = [e[1] for e in probe.events if e[0] == "begin"]
    assert clocks == [StepClock(s, 2, 4) for s in range(4)]
    assert [c.epoch for c in clocks] == [0.0, 0.5, 1.0, 1.5] and [c.progress for c in clocks] == [0, 0.25, 0.5, 0.75]
    # the schedule is in force when the step runs: decaying group = 0.1 x factor, the no-decay group stays 0
    assert [e[2] for e in probe.events if e[0] == "begin"] == [[0.1 * (1 + s), 0.0] for s in range(4)]
    # between backward and step: every gradient is there, no weight has moved yet
    assert all(e[2] and e[3] for e in probe.events if e[0] == "before_optimizer_step")
    assert [e[1] for e in probe.events if e[0] == "after"] == [0.25, 0.5, 0.75, 1.0]


def test_a_gradient_set_to_none_before_the_step_is_not_updated():
    probe = Probe()
    weight, bias = probe.backbone[1].weight, probe.backbone[1].bias
    optimizer = build_optimizer(probe, "adamw", 0.1, 0.5)
    before = weight.detach().clone(), bias.detach().clone()
    probe.before_optimizer_step = lambda clock: setattr(weight, "grad", None)
    from ssl_core.training.loop import train_step

    probe.begin_step = lambda clock: None
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    train_step(probe, optimizer, images, None)
    assert torch.equal(weight, before[0])            # neither a step nor weight decay
    assert not torch.equal(bias, before[1])


def test_schedules_scale_the_built_values_and_leave_the_learning_rate_alone():
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, "sgd", 0.1, 0.01)
    built = group_hyperparameters(optimizer)
    apply_schedule(optimizer, built, {"weight_decay": 3.0})
    apply_schedule(optimizer, built, {"weight_decay": 2.0})           # not compounded
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.02, 0.0]
    apply_schedule(optimizer, built, {})
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.02, 0.0]
    with pytest.raises(ValueError, match="learning rate"):
        apply_schedule(optimizer, built, {"lr": 2.0})
    with pytest.raises(ValueError, match="no setting 'betas'"):
        apply_schedule(optimizer, built, {"betas": 2.0})


def test_clip_grad_per_tensor_equals_its_definition():
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.zeros(s)) for s in ((3, 4), (5,), (2, 2))]
    for p, scale in zip(params, (10.0, 0.01, 1.0)):
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).float() * scale
    raw = [p.grad.clone() for p in params]
    clip_grad_per_tensor(params + [nn.Parameter(torch.zeros(1))], max_norm=0.5)   # one without a gradient
    for p, g in zip(params, raw):
        norm = math.sqrt(sum(v * v for v in g.flatten().tolist()))
        expected = g * (0.5 / (norm + 1e-6)) if 0.5 / (norm + 1e-6) < 1 else g
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=0)
    assert params[0].grad.norm() == pytest.approx(0.5, rel=1e-5)
    assert torch.equal(params[1].grad, raw[1])                      # under the limit: untouched
