"""Which unlabeled images to label next, from their embeddings.

- k-center greedy (the core-set of Sener & Savarese 2018): repeatedly take the pool image farthest from
  everything already labeled or chosen, so the chosen set covers the embedding space; distances are
  Euclidean between L2-normalised embeddings (the cosine geometry the encoder was trained in).
- uncertainty: the images whose classifier is least sure, by the margin between its two most likely
  classes (margin sampling, Scheffer et al. 2001).
- random: a seeded uniform sample (the baseline).
- balanced by cluster: k-means on the embeddings (a stand-in for the unknown classes), the budget split
  evenly over the clusters, each cluster's share chosen by one of the strategies above.
Memory: the pool's embeddings [N, D] float32 plus one distance per image.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

STRATEGIES = ("kcenter", "random", "uncertainty")


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return F.normalize(vectors.float(), dim=1)


def _sq_dist_to(unit: torch.Tensor, centers: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """min over centers of |x - c|^2 for every row of unit (both unit-norm: 2 - 2 x.c), chunked over centers."""
    best = torch.full((len(unit),), float("inf"))
    for start in range(0, len(centers), chunk):
        sim = unit @ centers[start:start + chunk].T
        best = torch.minimum(best, (2 - 2 * sim).min(dim=1).values)
    return best.clamp_min(0)


def kcenter_greedy(vectors: torch.Tensor, budget: int, labeled: torch.Tensor | None = None,
                   seed: int = 0) -> list[int]:
    """Indices of `budget` rows of vectors, chosen greedily to cover them (k-center).

    labeled: embeddings already labeled (they count as centers); without them the first pick is a
    seeded random row."""
    unit = _unit(vectors)
    budget = min(budget, len(unit))
    if budget <= 0:
        return []
    chosen: list[int] = []
    if labeled is not None and len(labeled):
        dist = _sq_dist_to(unit, _unit(labeled))
    else:
        first = int(torch.randint(len(unit), (1,), generator=torch.Generator().manual_seed(seed)))
        chosen.append(first)
        dist = (2 - 2 * unit @ unit[first]).clamp_min(0)
        dist[first] = -1.0
    while len(chosen) < budget:
        pick = int(dist.argmax())
        chosen.append(pick)
        dist = torch.minimum(dist, (2 - 2 * unit @ unit[pick]).clamp_min(0))
        dist[chosen] = -1.0
    return chosen


def margins(probs: torch.Tensor) -> torch.Tensor:
    """p(most likely class) - p(second most likely) per row: small = uncertain."""
    if probs.shape[1] < 2:
        return torch.ones(len(probs))
    top = probs.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def least_margin(margin: torch.Tensor, budget: int) -> list[int]:
    """The `budget` rows with the smallest margin (ties: lower index first)."""
    order = torch.argsort(margin, stable=True)
    return order[:min(budget, len(order))].tolist()


def random_choice(n: int, budget: int, seed: int = 0) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(budget, n)].tolist()


def kmeans(vectors: torch.Tensor, k: int, seed: int = 0, iterations: int = 25) -> torch.Tensor:
    """Cluster id per row: Lloyd's k-means on L2-normalised rows, k-means++ seeding."""
    unit = _unit(vectors)
    k = max(1, min(k, len(unit)))
    gen = torch.Generator().manual_seed(seed)
    centers = unit[torch.randint(len(unit), (1,), generator=gen)]
    while len(centers) < k:   # k-means++: next center with probability ~ squared distance
        d = _sq_dist_to(unit, centers)
        pick = torch.multinomial(d + 1e-12, 1, generator=gen) if d.sum() > 0 else torch.randint(len(unit), (1,), generator=gen)
        centers = torch.cat([centers, unit[pick]])
    assign = torch.zeros(len(unit), dtype=torch.long)
    for it in range(iterations):
        new = (unit @ centers.T).argmax(dim=1)
        if it and torch.equal(new, assign):
            break
        assign = new
        for c in range(k):
            members = unit[assign == c]
            if len(members):
                centers[c] = members.mean(0)
    return assign


def cluster_quotas(sizes: list[int], budget: int) -> list[int]:
    """Split `budget` as evenly as the cluster sizes allow (a full cluster's leftover goes to the others)."""
    quotas = [0] * len(sizes)
    left = min(budget, sum(sizes))
    while left > 0:
        open_ = [c for c in range(len(sizes)) if quotas[c] < sizes[c]]
        share, extra = divmod(left, len(open_))
        for rank, c in enumerate(sorted(open_, key=lambda c: (-(sizes[c] - quotas[c]), c))):
            add = min(share + (1 if rank < extra else 0), sizes[c] - quotas[c])
            quotas[c] += add
            left -= add
    return quotas


def balanced_by_cluster(clusters: torch.Tensor, budget: int,
                        choose: Callable[[torch.Tensor, int], list[int]]) -> list[int]:
    """Budget split evenly over the clusters; choose(member indices, quota) picks within each
    (it returns positions into the member list)."""
    ids = sorted(set(clusters.tolist()))
    members = [torch.nonzero(clusters == c).flatten() for c in ids]
    chosen: list[int] = []
    for idx, quota in zip(members, cluster_quotas([len(m) for m in members], budget)):
        if quota:
            chosen += idx[choose(idx, quota)].tolist()
    return chosen
