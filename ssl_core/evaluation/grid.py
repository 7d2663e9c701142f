"""The evaluation grid: label fraction x seed x protocol, the same cells for the finetune/evaluate
stages and the method comparison.

A cell is a kNN classifier on frozen features, a linear probe on the frozen encoder, or the encoder
fine-tuned end to end (from scratch when it is freshly initialised), always with the same budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ssl_core.augment import AugmentConfig
from ssl_core.data.cache import Split
from ssl_core.evaluation.protocols import FitConfig, accuracy, extract_features, fit_classifier, fit_linear_probe, knn_predict
from ssl_core.models.heads import Classifier
from ssl_core.models.spec import EncoderSpec, build_encoder

Fractions = dict[str, dict[str, list[int]]]   # {fraction: {seed: [indices into train]}}
Note = Callable[[str], None]


@dataclass(frozen=True)
class FinetuneRecipe:
    """The budget every classifier of the grid gets (linear probe and fine-tuning alike)."""
    protocols: tuple[str, ...]
    batch_size: int
    linear_epochs: int
    linear_lr: float
    finetune_epochs: int
    finetune_lr: float
    weight_decay: float
    min_steps: int
    head_init: str
    augment: dict = field(default_factory=dict)
    seed: int = 0

    def cell_seed(self, fraction_seed: str | int) -> int:
        """The seed of one cell's training run (its head init, batch order, augmentations)."""
        return self.seed * 1000 + int(fraction_seed)

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig().with_overrides(self.augment)


@dataclass
class EvalData:
    """What the grid reads: labeled train (subsets per fraction), val (model selection), test."""
    train: Split
    val: Split
    test: Split
    fractions: Fractions
    num_classes: int


def cells(recipe: FinetuneRecipe, fractions: Fractions) -> list[tuple[str, str, str, str]]:
    """(init, protocol, fraction, seed) for every classifier the finetune stage trains."""
    out = []
    for frac, seeds in fractions.items():
        for seed in seeds:
            for protocol in recipe.protocols:
                out.append(("ssl", protocol, frac, seed))
            out.append(("scratch", "finetune", frac, seed))
    return out


def scratch_encoder(spec: EncoderSpec, run_seed: int) -> torch.nn.Module:
    """A freshly initialised encoder of the architecture in `spec` (the scratch baseline's start)."""
    torch.manual_seed(run_seed)
    return build_encoder(spec)


def fit_cell(recipe: FinetuneRecipe, protocol: str, encoder: torch.nn.Module, subset: Split, val: Split,
             num_classes: int, device: torch.device, run_seed: int, pretrained: bool = True) -> tuple[Classifier, dict]:
    """One classifier with the recipe's budget: a linear probe on the frozen `encoder` (protocol
    "linear") or `encoder` trained end to end ("finetune"; from scratch when it is freshly initialised),
    its head starting from a linear probe's when head_init is "probe" and `encoder` is pretrained."""
    linear = FitConfig(epochs=recipe.linear_epochs, lr=recipe.linear_lr, batch_size=recipe.batch_size,
                       weight_decay=recipe.weight_decay, min_steps=recipe.min_steps, seed=run_seed)
    if protocol == "linear":
        return fit_linear_probe(encoder, subset, val, num_classes, linear, device)
    # LP-FT (Kumar et al. 2022): a random head's first large gradients distort pretrained features, a
    # linear probe's head does not. Only for pretrained encoders: a probe of random features is no head
    # to start from.
    lp_ft = recipe.head_init == "probe" and pretrained
    head = fit_linear_probe(encoder, subset, val, num_classes, linear, device)[0].head if lp_ft else None
    cfg = FitConfig(epochs=recipe.finetune_epochs, lr=recipe.finetune_lr, batch_size=recipe.batch_size,
                    weight_decay=recipe.weight_decay, min_steps=recipe.min_steps, seed=run_seed)
    return fit_classifier(encoder, subset, val, num_classes, cfg, recipe.augment_config(), device, head=head)


def knn_rows(method: str, encoder: torch.nn.Module, data: EvalData, k: int, device: torch.device,
             init: str) -> list[dict]:
    """Test accuracy of the kNN classifier at every (fraction, seed), from one feature pass."""
    train_f = extract_features(encoder, data.train.images, device)
    test_f = extract_features(encoder, data.test.images, device)
    rows = []
    for frac, seeds in data.fractions.items():
        for seed, idx in seeds.items():
            idx_t = torch.as_tensor(idx, dtype=torch.long)
            pred = knn_predict(train_f[idx_t], data.train.labels[idx_t], test_f, data.num_classes, k)
            rows.append({"method": method, "init": init, "protocol": "knn", "label_fraction": float(frac),
                         "seed": int(seed), "accuracy": (pred == data.test.labels).float().mean().item()})
    return rows


def fit_rows(recipe: FinetuneRecipe, method: str, protocols: list[str], start: Callable[[int], torch.nn.Module],
             data: EvalData, device: torch.device, note: Note, pretrained: bool = True) -> list[dict]:
    """Test accuracy of a classifier per (fraction, seed, protocol); start(run_seed) gives its encoder."""
    rows = []
    for frac, seeds in data.fractions.items():
        for seed, idx in seeds.items():
            subset, run_seed = data.train.subset(idx), recipe.cell_seed(seed)
            for protocol in protocols:
                model, _ = fit_cell(recipe, protocol, start(run_seed), subset, data.val, data.num_classes,
                                    device, run_seed, pretrained)
                acc = accuracy(model.to(device), data.test, device)
                note(f"{method}/{protocol}: fraction {frac} seed {seed} ({len(subset)} labels) test acc {acc:.4f}")
                rows.append({"method": method, "protocol": protocol, "label_fraction": float(frac),
                             "seed": int(seed), "accuracy": acc})
    return rows
