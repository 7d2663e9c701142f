"""Optimizers and schedule against straightforward references."""
from __future__ import annotations

import math

import torch
from torch import nn

from ssl_core.training.optim import LARS, build_optimizer, param_groups, warmup_cosine


def test_weight_decay_skips_norm_and_bias():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1)
    decay_ids = {id(p) for p in decay["params"]}
    assert decay_ids == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_warmup_then_cosine_to_zero():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    for step in range(4, 14):
        expected = 0.5 * (1 + math.cos(math.pi * (step - 4) / 10))
        assert math.isclose(lrs[step], expected, rel_tol=1e-9)
    assert sched.get_last_lr()[0] == 0.0


def test_lars_matches_hand_computed_step():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))        # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.5, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.tensor([0.6, 0.8])
    b.grad = torch.tensor([2.0])
    opt.step()
    g = torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0])
    trust = 0.001 * 5.0 / (g.norm() + 1e-8)
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.5 * trust * g)
    torch.testing.assert_close(b.detach(), torch.tensor([0.0]))   # excluded: plain SGD step 1 - 0.5*2


def test_build_optimizer_names():
    model = nn.Linear(3, 2)
    assert isinstance(build_optimizer(model, "sgd", 0.1, 0.0), torch.optim.SGD)
    assert isinstance(build_optimizer(model, "adamw", 0.1, 0.0), torch.optim.AdamW)
    assert isinstance(build_optimizer(model, "lars", 0.1, 0.0), LARS)
