"""fit_cell, the one classifier a finetune cell trains: finetune.head_init decides where a pretrained
encoder's head starts; scratch always starts from a random head."""
from __future__ import annotations

import torch

from fixtures_repo import PROJECT_ROOT
from ssl_core.augment import AugmentConfig
from ssl_core.config import load_params
from ssl_core.evaluation import FitConfig, fit_linear_probe
from ssl_core.stages.finetune import fit_cell
from test_evaluation import Flat, separable_split

CPU = torch.device("cpu")
IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0, jitter_p=0, gray_p=0)


def _finetune(head_init: str, pretrained: bool = True):
    # a learning rate too small to move anything: what comes back is where fine-tuning started
    params = load_params(PROJECT_ROOT / "params.yaml", [f"finetune.head_init={head_init}", "finetune.finetune_lr=1e-12",
                                                        "finetune.finetune_epochs=1", "finetune.min_steps=0"])
    train, val = separable_split(64, 6), separable_split(32, 7)
    model, _ = fit_cell(params, "finetune", Flat(16), train, val, 2, IDENTITY, CPU, run_seed=3, pretrained=pretrained)
    f = params.finetune
    probe, _ = fit_linear_probe(Flat(16), train, val, 2, FitConfig(epochs=f.linear_epochs, lr=f.linear_lr,
                                batch_size=f.batch_size, weight_decay=f.weight_decay, seed=3), CPU)
    return model.head, probe.head


def test_head_init_probe_starts_fine_tuning_from_the_linear_probe():
    head, probe = _finetune("probe")
    assert torch.allclose(head.weight, probe.weight) and torch.allclose(head.bias, probe.bias)


def test_head_init_random_does_not():
    head, probe = _finetune("random")
    assert not torch.allclose(head.weight, probe.weight)


def test_scratch_never_starts_from_a_probe_of_random_features():
    head, probe = _finetune("probe", pretrained=False)
    assert not torch.allclose(head.weight, probe.weight)
