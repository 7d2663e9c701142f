"""Selection strategies against straightforward implementations."""
from __future__ import annotations

import math

import torch

from ssl_core.embeddings.select import (balanced_by_cluster, cluster_quotas, kcenter_greedy, kmeans, least_margin,
                                        margins, random_choice)


def kcenter_loops(points: list[list[float]], budget: int, first: int | None, labeled: list[list[float]]) -> list[int]:
    """Sener & Savarese 2018, Algorithm 1, over unit vectors, one distance at a time."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    pts, lab = [unit(p) for p in points], [unit(p) for p in labeled]

    def dist(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b))

    chosen = [] if first is None else [first]
    centers = lab + ([pts[first]] if first is not None else [])
    while len(chosen) < budget:
        best = max((i for i in range(len(pts)) if i not in chosen), key=lambda i: min(dist(pts[i], c) for c in centers))
        chosen.append(best)
        centers.append(pts[best])
    return chosen


def test_kcenter_equals_the_loop_implementation():
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(40, 3, generator=gen)
    labeled = torch.randn(4, 3, generator=gen)
    assert kcenter_greedy(vectors, 6, labeled=labeled) == kcenter_loops(vectors.tolist(), 6, None, labeled.tolist())
    got = kcenter_greedy(vectors, 5, seed=7)
    assert got == kcenter_loops(vectors.tolist(), 5, got[0], [])
    assert len(set(kcenter_greedy(vectors, 40))) == 40 and len(kcenter_greedy(vectors, 99)) == 40


def test_kcenter_covers_every_cluster_before_repeating_one():
    gen = torch.Generator().manual_seed(1)
    centers = torch.eye(4) * 5
    vectors = torch.cat([c + 0.05 * torch.randn(30, 4, generator=gen) for c in centers])
    clusters = {i // 30 for i in kcenter_greedy(vectors, 4)}
    assert clusters == {0, 1, 2, 3}


def test_kmeans_finds_separated_clusters_and_quotas_split_evenly():
    gen = torch.Generator().manual_seed(2)
    vectors = torch.cat([torch.eye(3)[c] * 4 + 0.05 * torch.randn(20, 3, generator=gen) for c in range(3)])
    assign = kmeans(vectors, 3)
    assert all(len(set(assign[c * 20:(c + 1) * 20].tolist())) == 1 for c in range(3))
    assert len(set(assign.tolist())) == 3
    assert cluster_quotas([10, 10, 10], 7) == [3, 2, 2]
    assert cluster_quotas([1, 10, 10], 9) == [1, 4, 4]
    assert sum(cluster_quotas([2, 3], 99)) == 5
    picked = balanced_by_cluster(assign, 6, lambda idx, quota: list(range(quota)))
    assert sorted(assign[picked].tolist()) == [0, 0, 1, 1, 2, 2]


def test_margin_and_random():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0]])
    assert torch.allclose(margins(probs), torch.tensor([0.8, 0.05, 0.0]))
    assert least_margin(margins(probs), 2) == [2, 1]
    assert random_choice(10, 4, seed=3) == random_choice(10, 4, seed=3) != random_choice(10, 4, seed=4)
    assert sorted(random_choice(5, 9)) == [0, 1, 2, 3, 4]
