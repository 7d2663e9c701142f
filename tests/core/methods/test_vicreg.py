"""VICReg against per-dimension loops: each term; the variance term's closed form on a batch of identical
rows; the method's loss is the weighted sum; global-batch statistics: 2 ranks == 1 process."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_core.methods import get_method_class
from two_views import loss_and_projections
from ssl_core.methods.vicreg import VICReg, covariance_term, variance_term, vicreg_terms
from ssl_core.models.backbones import build_backbone


def loop_terms(z1: list, z2: list, eps: float, target: float) -> tuple[float, float, float]:
    """The paper's definitions, dimension by dimension (the reference code's 1/2 on the variance term)."""
    n, d = len(z1), len(z1[0])
    invariance = sum((z1[i][j] - z2[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def column_means(z):
        return [sum(z[i][j] for i in range(n)) / n for j in range(d)]

    def variance(z):
        m = column_means(z)
        hinge = 0.0
        for j in range(d):
            var = sum((z[i][j] - m[j]) ** 2 for i in range(n)) / (n - 1)
            hinge += max(0.0, target - math.sqrt(var + eps))
        return hinge / d

    def covariance(z):
        m = column_means(z)
        total = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    total += (sum((z[i][j] - m[j]) * (z[i][k] - m[k]) for i in range(n)) / (n - 1)) ** 2
        return total / d

    return invariance, (variance(z1) + variance(z2)) / 2, covariance(z1) + covariance(z2)


def test_each_term_equals_a_per_dimension_loop():
    gen = torch.Generator().manual_seed(0)
    # column scales straddle the hinge: some dimensions' std below the target, some above
    scales = torch.tensor([0.1, 0.5, 2.0, 3.0, 0.05, 1.5], dtype=torch.float64)
    for n, eps, target in [(7, 1e-4, 1.0), (3, 1e-2, 2.0)]:
        z1 = torch.randn(n, 6, generator=gen, dtype=torch.float64) * scales
        z2 = torch.randn(n, 6, generator=gen, dtype=torch.float64) * scales.flip(0)
        got = vicreg_terms(z1, z2, eps, target)
        expected = loop_terms(z1.tolist(), z2.tolist(), eps, target)
        for name, a, b in zip(("invariance", "variance", "covariance"), got, expected):
            assert a.item() == pytest.approx(b, rel=1e-10), name
        assert 0 < expected[1]   # the hinge is active somewhere


def test_identical_rows_give_the_variance_terms_closed_form():
    z = torch.randn(1, 5, dtype=torch.float64).expand(6, 5)   # every row the same: zero variance
    for eps, target in [(1e-4, 1.0), (0.25, 2.0)]:
        assert variance_term(z, eps, target).item() == pytest.approx(target - math.sqrt(eps), rel=1e-12)
        inv, var, cov = vicreg_terms(z, z.clone(), eps, target)
        assert (inv.item(), cov.item()) == (0.0, 0.0) and var.item() == pytest.approx(target - math.sqrt(eps))
    assert covariance_term(torch.eye(4, dtype=torch.float64)) == pytest.approx(12 * (1 / 12) ** 2 / 4)


def make():
    torch.manual_seed(0)
    backbone = build_backbone("resnet_narrow", 3, 16, width=4)
    return VICReg.build(backbone, {"hidden_dim": 16, "projection_dim": 8}, image_shape=(3, 16, 16)).train()


def test_method_loss_is_the_weighted_sum_of_the_terms():
    m = make()
    x = torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    loss, extra, z1, z2 = loss_and_projections(m, x, seed=4)
    inv, var, cov = loop_terms(z1.tolist(), z2.tolist(), 1e-4, 1.0)
    assert loss.item() == pytest.approx(25 * inv + 25 * var + cov, rel=1e-5)
    assert extra["variance"].item() == pytest.approx(var, rel=1e-5)
    assert isinstance(m.projector[-1], torch.nn.Linear) and len(m.projector) == 7   # 3 layers, paper's expander


def test_knobs_are_validated_by_name():
    assert get_method_class("vicreg") is VICReg
    assert VICReg.Params().invariance_coeff == 25 and VICReg.Params().variance_coeff == 25
    assert VICReg.Params().covariance_coeff == 1
    for bad, knob in [({"variance_eps": 0}, "variance_eps"), ({"covariance_coeff": -1}, "covariance_coeff"),
                      ({"projection_dim": 1}, "projection_dim"), ({"std_target": 0}, "std_target")]:
        with pytest.raises(ValueError, match=f"pretrain.method_params.{knob}"):
            VICReg.Params(**bad)


@pytest.mark.slow
def test_two_ranks_equal_one_process(two_rank_runs):
    """Variance and covariance over the global batch: 2 steps on 2 gloo ranks == 1 process (losses, weights, updates)."""
    from two_ranks import assert_two_ranks_match_one_process

    assert_two_ranks_match_one_process("vicreg", two_rank_runs["vicreg"])
