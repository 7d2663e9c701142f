"""NT-Xent against SimCLR's Algorithm 1 written as plain loops."""
from __future__ import annotations

import math

import torch

from ssl_core.methods.simclr import nt_xent


def algorithm1_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR Algorithm 1: views interleaved as 2k-1, 2k; l(i, j) = -log softmax over k != i."""
    n = z1.shape[0]
    z = []
    for k in range(n):
        z += [z1[k].tolist(), z2[k].tolist()]

    def sim(u, v):
        dot = sum(a * b for a, b in zip(u, v))
        return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    def ell(i, j):
        denom = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(sim(z[i], z[j]) / tau) / denom)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def test_nt_xent_equals_algorithm_1_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    for n, d, tau in [(4, 8, 0.5), (7, 3, 0.1), (2, 16, 1.0)]:
        z1 = torch.randn(n, d, generator=gen, dtype=torch.float64)
        z2 = torch.randn(n, d, generator=gen, dtype=torch.float64)
        assert math.isclose(nt_xent(z1, z2, tau).item(), algorithm1_loss(z1, z2, tau), rel_tol=1e-9)


def test_identical_orthogonal_embeddings_give_closed_form():
    # z1 == z2 == orthonormal rows: positive similarity 1, all 2N-2 negatives 0.
    n, tau = 5, 0.2
    z = torch.eye(8, dtype=torch.float64)[:n] * 3.0      # scale must not matter (cosine)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    assert math.isclose(nt_xent(z, z.clone(), tau).item(), expected, rel_tol=1e-12)


def test_symmetric_in_its_two_views():
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(6, 4, generator=gen, dtype=torch.float64)
    assert math.isclose(nt_xent(z1, z2, 0.3).item(), nt_xent(z2, z1, 0.3).item(), rel_tol=1e-12)
