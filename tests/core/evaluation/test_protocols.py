"""kNN, linear probe and fine-tuning against references and hand-made data."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_core.augment import AugmentConfig
from separable import Flat, separable_split
from ssl_core.evaluation.protocols import FitConfig, accuracy, effective_rank, fit_classifier, fit_linear_probe, knn_predict


def reference_knn(train_f, train_y, test_f, num_classes, k, t):
    preds = []
    for q in F.normalize(test_f, dim=1):
        sims = [(float(q @ x), int(y)) for x, y in zip(F.normalize(train_f, dim=1), train_y)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, y in sims[:k]:
            votes[y] += torch.exp(torch.tensor(sim / t)).item()
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


def test_knn_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(40, 8, generator=gen), torch.randn(15, 8, generator=gen)
    train_y = torch.randint(0, 4, (40,), generator=gen)
    got = knn_predict(train_f, train_y, test_f, 4, k=5, temperature=0.1, chunk=4)
    assert torch.equal(got, reference_knn(train_f, train_y, test_f, 4, 5, 0.1))


def test_linear_probe_learns_separable_data_and_folds_standardisation():
    train, val = separable_split(64, 0), separable_split(32, 1)
    clf, info = fit_linear_probe(Flat(16), train, val, 2, FitConfig(epochs=30, lr=0.05, batch_size=16), torch.device("cpu"))
    assert info["val_accuracy"] == 1.0
    assert accuracy(clf, val, torch.device("cpu")) == 1.0   # the folded head takes raw images
    assert not any(p.requires_grad for p in clf.backbone.parameters())


def test_fine_tuning_selects_by_validation_and_never_sees_test():
    train, val = separable_split(64, 2), separable_split(32, 3)
    identity = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0, jitter_p=0, gray_p=0)
    clf, info = fit_classifier(Flat(16), train, val, 2, FitConfig(epochs=20, lr=0.05, batch_size=16),
                               identity, torch.device("cpu"))
    assert info["val_accuracy"] == accuracy(clf, val, torch.device("cpu"))
    assert info["val_accuracy"] >= 0.9


def test_fine_tuning_starts_from_the_given_head():
    """LP-FT: with a learning rate too small to move anything, the fine-tuned head is the probe's head,
    and the probe's accuracy carries over from the first step (a random head starts near chance)."""
    train, val = separable_split(64, 4), separable_split(32, 5)
    identity = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0, jitter_p=0, gray_p=0)
    probe, _ = fit_linear_probe(Flat(16), train, val, 2, FitConfig(epochs=30, lr=0.05, batch_size=16), torch.device("cpu"))
    frozen = FitConfig(epochs=1, lr=1e-12, batch_size=16)
    clf, info = fit_classifier(Flat(16), train, val, 2, frozen, identity, torch.device("cpu"), head=probe.head)
    assert torch.allclose(clf.head.weight, probe.head.weight) and torch.allclose(clf.head.bias, probe.head.bias)
    assert info["val_accuracy"] == 1.0
    assert clf.head is not probe.head   # a copy: training never writes into the probe


def test_effective_rank_counts_the_directions_features_use():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 64, generator=gen))[0]
    # centred, equal variance along 16 orthogonal directions: rank 16, whatever the rotation or the offset
    signs = torch.tensor([1.0, -1.0]).repeat(8)
    equal = torch.cat([torch.diag(signs), -torch.diag(signs)]) @ basis[:16] + 5.0
    assert abs(effective_rank(equal) - 16) < 1e-6
    line = torch.randn(200, 1, generator=gen) * torch.randn(1, 64, generator=gen)   # one direction only
    assert abs(effective_rank(line) - 1) < 1e-4
    # the closed form for singular values s: exp(-sum p log p), p = s / sum(s)
    x = torch.randn(300, 8, generator=gen) * torch.tensor([8.0, 4, 2, 1, 1, 1, 0.5, 0.1])
    s = torch.linalg.svdvals((x - x.mean(0)).double())
    p = s / s.sum()
    assert abs(effective_rank(x) - float(torch.exp(-(p * p.log()).sum()))) < 1e-9
