"""The drift statistic against a loop implementation of the unbiased MMD^2 and its permutation test."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssl_core.embeddings.drift import median_bandwidth, mmd_test, permutation_masks


def mmd2_loops(x: list[list[float]], y: list[list[float]], sigma: float) -> float:
    """Gretton et al. 2012, eq. 3 (unbiased), written out pair by pair."""
    def k(a, b):
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * sigma ** 2))
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_and_p_value_equal_the_loop_implementation():
    gen = torch.Generator().manual_seed(0)
    ref, cur = torch.randn(9, 4, generator=gen), torch.randn(7, 4, generator=gen) + 0.3
    result = mmd_test(ref, cur, permutations=40, seed=3)
    z = F.normalize(torch.cat([ref, cur]).double(), dim=1)
    sigma = median_bandwidth(z)
    rows = z.tolist()
    assert result.mmd2 == __import__("pytest").approx(mmd2_loops(rows[:9], rows[9:], sigma), abs=1e-12)
    hits = 0
    for mask in permutation_masks(16, 9, 40, seed=3):
        first = [r for r, m in zip(rows, mask.tolist()) if m]
        second = [r for r, m in zip(rows, mask.tolist()) if not m]
        hits += mmd2_loops(first, second, sigma) >= result.mmd2 - 1e-12
    assert result.p_value == (1 + hits) / 41
    assert (result.n_reference, result.n_current, result.permutations) == (9, 7, 40)


def test_same_distribution_is_not_drift_and_a_shift_is():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(200, 8, generator=gen)
    same = mmd_test(base, torch.randn(60, 8, generator=gen), permutations=200)
    shifted = mmd_test(base, torch.randn(60, 8, generator=gen) + torch.tensor([3.0] + [0.0] * 7), permutations=200)
    assert same.p_value > 0.05 and abs(same.mmd2) < 0.02
    assert shifted.p_value == 1 / 201 and shifted.mmd2 > 0.1


def test_too_few_embeddings_is_one_clear_error():
    import pytest

    with pytest.raises(ValueError, match="at least 2 embeddings per sample"):
        mmd_test(torch.randn(5, 3), torch.randn(1, 3))
