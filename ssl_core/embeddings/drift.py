"""Two-sample drift statistic on embeddings: MMD with a Gaussian kernel and a permutation-test p-value.

MMD^2 (Gretton et al. 2012) is the squared distance between the kernel mean embeddings of two samples:
0 when they come from one distribution. The unbiased estimate is
    1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j).
Embeddings are L2-normalised first (what the encoder's cosine geometry means), so distances lie in
[0, 2] and MMD^2 in [-small, 2]. The kernel's bandwidth is the median pairwise distance of the pooled
sample (the median heuristic). The p-value is the share of random relabellings of the pooled sample
whose MMD^2 reaches the observed one, (1 + hits) / (1 + permutations): it says whether the difference
could be chance at these sample sizes, the MMD^2 says how large it is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DriftResult:
    mmd2: float          # unbiased MMD^2 estimate (Gaussian kernel, unit-normalised embeddings)
    p_value: float       # permutation test, (1 + hits) / (1 + permutations)
    bandwidth: float     # the kernel's sigma (median pairwise distance of the pooled sample)
    n_reference: int
    n_current: int
    permutations: int

    def as_dict(self) -> dict:
        return asdict(self)


def gaussian_kernel(z: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """k(a, b) = exp(-|a - b|^2 / (2 sigma^2)) for every pair of rows of z (float64)."""
    sq = torch.cdist(z, z).pow(2)
    return torch.exp(-sq / (2 * bandwidth ** 2))


def median_bandwidth(z: torch.Tensor) -> float:
    dist = torch.cdist(z, z)
    off = dist[~torch.eye(len(z), dtype=torch.bool)]
    median = float(off.median()) if off.numel() else 1.0
    return median if median > 0 else 1.0


def permutation_masks(n_total: int, n_first: int, permutations: int, seed: int) -> torch.Tensor:
    """[permutations, n_total] bool masks: True marks the rows a relabelling puts in the first sample."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(permutations, n_total, dtype=torch.bool)
    for p in range(permutations):
        masks[p, torch.randperm(n_total, generator=gen)[:n_first]] = True
    return masks


def _mmd2_for_masks(kernel: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 for each mask row (True = first sample), from the pooled kernel with a zero diagonal.

    For a = mask as 0/1: sum_xx = a'Ka, sum_xy = a'K1 - a'Ka, sum_yy = 1'K1 - 2a'K1 + a'Ka."""
    a = masks.to(kernel.dtype).T                        # [N, P]
    m = a.sum(0)
    n = kernel.shape[0] - m
    rows = kernel.sum(1)                               # K1
    total = rows.sum()
    xx = (a * (kernel @ a)).sum(0)
    a_rows = rows @ a
    xy = a_rows - xx
    yy = total - 2 * a_rows + xx
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


def mmd_test(reference: torch.Tensor, current: torch.Tensor, permutations: int = 500, seed: int = 0,
             chunk: int = 100) -> DriftResult:
    """MMD^2 between two embedding samples [m, D] and [n, D] (m, n >= 2) and its permutation p-value."""
    if len(reference) < 2 or len(current) < 2:
        raise ValueError(f"the drift test needs at least 2 embeddings per sample, got {len(reference)} and {len(current)}")
    z = F.normalize(torch.cat([reference, current]).double(), dim=1)
    bandwidth = median_bandwidth(z)
    kernel = gaussian_kernel(z, bandwidth)
    kernel.fill_diagonal_(0)
    m = len(reference)
    observed = _mmd2_for_masks(kernel, (torch.arange(len(z)) < m)[None])[0]
    hits = 0
    masks_all = permutation_masks(len(z), m, permutations, seed)
    for start in range(0, permutations, chunk):   # bounded memory: N x chunk at a time
        hits += int((_mmd2_for_masks(kernel, masks_all[start:start + chunk]) >= observed - 1e-12).sum())
    return DriftResult(mmd2=float(observed), p_value=(1 + hits) / (1 + permutations), bandwidth=bandwidth,
                       n_reference=m, n_current=len(current), permutations=permutations)
