"""Barlow Twins against an explicit cross-correlation loop; perfectly correlated, decorrelated embeddings
give 0; global-batch statistics and gradients: 2 ranks == 1 process (the bug class of lightly #1977, a
gradient scaled by 1 / world size, would show up in the compared updates)."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_core.methods import get_method_class
from two_views import loss_and_projections
from ssl_core.methods.barlow_twins import BN_EPS, BarlowTwins, barlow_twins_loss
from ssl_core.models.backbones import build_backbone


def loop_loss(z1: list, z2: list, weight: float) -> float:
    """Standardise each dimension over the batch (biased variance, BatchNorm's eps), C_ij = sum_b a_bi b_bj / N,
    then sum_i (1 - C_ii)^2 + weight * sum_{i != j} C_ij^2."""
    n, d = len(z1), len(z1[0])

    def standardise(z):
        out = [[0.0] * d for _ in range(n)]
        for j in range(d):
            mean = sum(z[i][j] for i in range(n)) / n
            var = sum((z[i][j] - mean) ** 2 for i in range(n)) / n
            for i in range(n):
                out[i][j] = (z[i][j] - mean) / math.sqrt(var + BN_EPS)
        return out

    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k][i] * b[k][j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else weight * c ** 2
    return loss


def test_loss_equals_an_explicit_cross_correlation_loop():
    gen = torch.Generator().manual_seed(0)
    for n, d, weight in [(6, 4, 5e-3), (9, 7, 0.5), (2, 3, 1.0)]:
        z1 = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3 + 1
        z2 = torch.randn(n, d, generator=gen, dtype=torch.float64)
        assert barlow_twins_loss(z1, z2, weight).item() == pytest.approx(loop_loss(z1.tolist(), z2.tolist(), weight),
                                                                         rel=1e-10)


def hadamard_columns(n: int, d: int) -> torch.Tensor:
    """d zero-mean, unit-variance, mutually orthogonal +-1 columns (Sylvester Hadamard, all-ones column dropped)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h[:, 1:d + 1]


def test_perfectly_correlated_decorrelated_embeddings_give_zero():
    z = hadamard_columns(8, 5)
    scale, shift = torch.tensor([0.5, 2.0, 3.0, 1.0, 7.0], dtype=torch.float64), torch.arange(5.0, dtype=torch.float64)
    # any per-dimension positive scale and shift: standardisation removes it
    loss = barlow_twins_loss(z * scale + shift, z * scale.flip(0) - shift, 5e-3).item()
    assert loss == pytest.approx(0.0, abs=1e-8)   # not exactly: BatchNorm's eps keeps C_ii a hair below 1
    # anti-correlated: every C_ii = -1, (1 - (-1))^2 = 4 per dimension
    assert barlow_twins_loss(z, -z, 5e-3).item() == pytest.approx(4 * 5, rel=1e-4)
    # correlated with the wrong dimension: C_ii = 0 on the diagonal, C_ij = 1 for the swapped pair
    swapped = z[:, [1, 0, 2, 3, 4]]
    assert barlow_twins_loss(z, swapped, 0.5).item() == pytest.approx(2 + 0.5 * 2, rel=1e-4)


def test_method_loss_and_projector():
    torch.manual_seed(0)
    m = BarlowTwins.build(build_backbone("resnet_narrow", 3, 16, width=4), {"hidden_dim": 16, "projection_dim": 8},
                          image_shape=(3, 16, 16)).train()
    x = torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    loss, _, z1, z2 = loss_and_projections(m, x, seed=4)
    assert loss.item() == pytest.approx(loop_loss(z1.tolist(), z2.tolist(), 5e-3), rel=1e-5)
    assert m.projector[-1].bias is None   # the reference projector's last layer has no bias


def test_knobs_are_validated_by_name():
    assert get_method_class("barlow_twins") is BarlowTwins and BarlowTwins.Params().off_diagonal_weight == 5e-3
    for bad, knob in [({"off_diagonal_weight": -1e-3}, "off_diagonal_weight"), ({"hidden_dim": 1.5}, "hidden_dim")]:
        with pytest.raises(ValueError, match=f"pretrain.method_params.{knob}"):
            BarlowTwins.Params(**bad)


@pytest.mark.slow
def test_two_ranks_equal_one_process(two_rank_runs):
    """Standardisation and cross-correlation over the global batch: 2 steps on 2 gloo ranks == 1 process:
    losses, weights, and the updates themselves to 0.1 % (a gradient off by the world size fails this)."""
    from two_ranks import assert_two_ranks_match_one_process

    assert_two_ranks_match_one_process("barlow_twins", two_rank_runs["barlow_twins"])
