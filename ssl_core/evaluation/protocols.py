"""Transfer evaluation: kNN on frozen features, linear probe, full fine-tuning (and scratch).

Every function takes uint8 caches and returns plain numbers/modules; tracking happens at the edge.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.augment import AugmentConfig, augment_batch
from ssl_core.data.cache import Split
from ssl_core.models.heads import Classifier
from ssl_core.training.optim import build_optimizer, warmup_cosine


@torch.no_grad()
def extract_features(backbone: nn.Module, images_u8: torch.Tensor, device: torch.device,
                     batch_size: int = 512) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    out = []
    for i in range(0, images_u8.shape[0], batch_size):
        x = images_u8[i:i + batch_size].to(device).float().div_(255)
        out.append(backbone(x).float().cpu())
    backbone.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, getattr(backbone, "out_dim", 0))


def effective_rank(features: torch.Tensor) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of the
    centred feature matrix [N, D]. D for features that use every direction equally, 1 for a single one.
    A label-free collapse detector: a non-contrastive method whose features shrink onto a few
    directions (dimensional collapse) shows it here while its loss still looks fine."""
    if features.shape[0] < 2:
        return float("nan")
    singular = torch.linalg.svdvals((features - features.mean(0)).double())
    p = singular / singular.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def knn_predict(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN on cosine similarity (Wu et al. 2018): votes weighted by exp(sim / T)."""
    train_f = F.normalize(train_f, dim=1)
    test_f = F.normalize(test_f, dim=1)
    k = min(k, train_f.shape[0])
    preds = []
    for i in range(0, test_f.shape[0], chunk):
        sim = test_f[i:i + chunk] @ train_f.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_y[top_idx], (top_sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(backbone: nn.Module, train: Split, test: Split, num_classes: int, device: torch.device,
                 k: int = 20) -> float:
    return knn_accuracy_and_rank(backbone, train, test, num_classes, device, k)[0]


def knn_accuracy_and_rank(backbone: nn.Module, train: Split, test: Split, num_classes: int, device: torch.device,
                          k: int = 20) -> tuple[float, float]:
    """kNN accuracy (train -> test) and the effective rank of the test features, from one feature pass."""
    train_f = extract_features(backbone, train.images, device)
    test_f = extract_features(backbone, test.images, device)
    pred = knn_predict(train_f, train.labels, test_f, num_classes, k)
    return (pred == test.labels).float().mean().item(), effective_rank(test_f)


@dataclass
class FitConfig:
    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 1e-4
    min_steps: int = 0
    seed: int = 0
    optimizer: str = "adamw"


def _steps(n: int, cfg: FitConfig) -> tuple[int, int]:
    per_epoch = max(math.ceil(n / cfg.batch_size), 1)
    return per_epoch, max(per_epoch * cfg.epochs, cfg.min_steps)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, device: torch.device, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(split), batch_size):
        x = split.images[i:i + batch_size].to(device).float().div_(255)
        correct += (model(x).argmax(1).cpu() == split.labels[i:i + batch_size]).sum().item()
    return correct / max(len(split), 1)


def fit_linear_probe(backbone: nn.Module, train: Split, val: Split, num_classes: int, cfg: FitConfig,
                     device: torch.device) -> tuple[Classifier, dict]:
    """Logistic regression on frozen features (computed once), best epoch chosen on val."""
    train_f = extract_features(backbone, train.images, device)
    val_f = extract_features(backbone, val.images, device)
    mean, std = train_f.mean(0, keepdim=True), train_f.std(0, keepdim=True) + 1e-6
    torch.manual_seed(cfg.seed)   # the head's init: the same probe for the same cfg, whatever ran before
    head = nn.Linear(train_f.shape[1], num_classes)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = build_optimizer(head, cfg.optimizer, cfg.lr, cfg.weight_decay)
    per_epoch, total = _steps(len(train), cfg)
    sched = warmup_cosine(opt, 0, total)
    best, best_state, step = -1.0, None, 0
    while step < total:
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = F.cross_entropy(head((train_f[idx] - mean) / std), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        with torch.no_grad():
            acc = (head((val_f - mean) / std).argmax(1) == val.labels).float().mean().item()
        if acc > best:
            best, best_state = acc, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    # Fold the feature standardisation into the linear layer so the classifier takes raw images.
    folded = nn.Linear(train_f.shape[1], num_classes)
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)
        folded.bias.copy_(head.bias - (head.weight * mean / std).sum(1))
    clf = Classifier(copy.deepcopy(backbone), num_classes)
    clf.head = folded
    for p in clf.backbone.parameters():
        p.requires_grad_(False)
    return clf.cpu().eval(), {"val_accuracy": best, "steps": total}


def fit_classifier(backbone: nn.Module, train: Split, val: Split, num_classes: int, cfg: FitConfig,
                   augment: AugmentConfig, device: torch.device,
                   on_epoch: Callable[[int, float], None] | None = None,
                   head: nn.Linear | None = None) -> tuple[Classifier, dict]:
    """Train backbone + linear head end to end (fine-tuning, or from scratch with a fresh backbone).
    head: the linear head to start from (LP-FT: a linear probe's); None = a fresh random one."""
    torch.manual_seed(cfg.seed)
    model = Classifier(copy.deepcopy(backbone), num_classes)
    if head is not None:
        model.head.load_state_dict(head.state_dict())
    model = model.to(device)
    opt = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
    per_epoch, total = _steps(len(train), cfg)
    sched = warmup_cosine(opt, min(per_epoch, total // 10), total)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    best, best_state, step, epoch = -1.0, None, 0, 0
    eval_every = max(total // 20, per_epoch)   # bounded number of val passes for tiny label sets
    while step < total:
        model.train()
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:   # BatchNorm needs more than one sample
                continue
            x = augment_batch(train.images[idx].to(device), augment, aug_gen)
            loss = F.cross_entropy(model(x), train.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % eval_every == 0 or step >= total:
                acc = accuracy(model, val, device)
                model.train()
                if acc > best:
                    best, best_state = acc, copy.deepcopy(model.state_dict())
            if step >= total:
                break
        epoch += 1
        if on_epoch:
            on_epoch(epoch, best)
    model.load_state_dict(best_state)
    return model.cpu().eval(), {"val_accuracy": best, "steps": total}
