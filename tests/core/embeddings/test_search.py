"""Nearest neighbours and near-duplicates against brute force over every pair."""
from __future__ import annotations

import math

import torch

from ssl_core.embeddings.search import near_duplicate_pairs, top_k_cosine


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_top_k_matches_sorting_every_similarity():
    gen = torch.Generator().manual_seed(0)
    base, queries = torch.randn(50, 6, generator=gen), torch.randn(7, 6, generator=gen)
    sims, idx = top_k_cosine(queries, base, k=5, chunk=3)
    for q in range(7):
        expected = sorted(range(50), key=lambda j: -cosine(queries[q].tolist(), base[j].tolist()))[:5]
        assert idx[q].tolist() == expected
        assert sims[q, 0].item() == __import__("pytest").approx(cosine(queries[q].tolist(), base[expected[0]].tolist()), abs=1e-5)


def test_a_row_is_never_its_own_neighbour_when_excluded():
    vectors = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    _, idx = top_k_cosine(vectors, vectors, k=3, chunk=6, exclude_self=True)
    assert all(q not in idx[q].tolist() for q in range(20))


def test_near_duplicates_are_every_pair_above_the_threshold_once():
    gen = torch.Generator().manual_seed(2)
    vectors = torch.randn(30, 5, generator=gen)
    vectors[7] = vectors[3] * 2 + 0.01          # the same direction: a near-duplicate
    vectors[21] = vectors[3] + 0.02
    pairs = near_duplicate_pairs(vectors, threshold=0.98, chunk=4)
    rows = vectors.tolist()
    expected = {(i, j) for i in range(30) for j in range(i + 1, 30) if cosine(rows[i], rows[j]) >= 0.98}
    assert {(i, j) for i, j, _ in pairs} == expected and {(3, 7), (3, 21), (7, 21)} <= expected
    assert [p[2] for p in pairs] == sorted((p[2] for p in pairs), reverse=True)
