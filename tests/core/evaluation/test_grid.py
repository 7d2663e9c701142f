"""fit_cell, the one classifier a finetune cell trains: head_init decides where a pretrained
encoder's head starts; scratch always starts from a random head."""
from __future__ import annotations

import torch

from recipes import finetune_recipe
from separable import Flat, separable_split
from ssl_core.evaluation.grid import fit_cell
from ssl_core.evaluation.protocols import FitConfig, fit_linear_probe

CPU = torch.device("cpu")
IDENTITY = {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "hflip_p": 0.0, "jitter_p": 0.0, "gray_p": 0.0}


def _finetune(head_init: str, pretrained: bool = True):
    # a learning rate too small to move anything: what comes back is where fine-tuning started
    recipe = finetune_recipe(head_init=head_init, finetune_lr=1e-12, finetune_epochs=1, min_steps=0,
                             linear_epochs=100, linear_lr=0.01, batch_size=64, augment=IDENTITY)
    train, val = separable_split(64, 6), separable_split(32, 7)
    model, _ = fit_cell(recipe, "finetune", Flat(16), train, val, 2, CPU, run_seed=3, pretrained=pretrained)
    probe, _ = fit_linear_probe(Flat(16), train, val, 2, FitConfig(epochs=recipe.linear_epochs, lr=recipe.linear_lr,
                                batch_size=recipe.batch_size, weight_decay=recipe.weight_decay, seed=3), CPU)
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
