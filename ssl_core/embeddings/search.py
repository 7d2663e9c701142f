"""Nearest neighbours by cosine similarity and near-duplicate pairs, exact, in chunks.

Exact search with a matrix product and top-k per chunk of queries: the working memory is
chunk x N similarities, whatever N is. (Chosen over faiss-cpu by measurement at 100k vectors;
README, "Using the embeddings".)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def top_k_cosine(queries: torch.Tensor, base: torch.Tensor, k: int, chunk: int = 1024,
                 exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities [Q, k], indices into base [Q, k]) of each query's k most cosine-similar rows of base.
    exclude_self: queries ARE base (same order): a row is never its own neighbour."""
    base_n = F.normalize(base.float(), dim=1)
    k = min(k, len(base) - (1 if exclude_self else 0))
    sims, idxs = [], []
    for start in range(0, len(queries), chunk):
        sim = F.normalize(queries[start:start + chunk].float(), dim=1) @ base_n.T
        if exclude_self:
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + start] = -float("inf")
        top = sim.topk(k, dim=1)
        sims.append(top.values)
        idxs.append(top.indices)
    if not sims:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(sims), torch.cat(idxs)


def near_duplicate_pairs(vectors: torch.Tensor, threshold: float, chunk: int = 1024) -> list[tuple[int, int, float]]:
    """Every pair (i, j), i < j, whose cosine similarity is >= threshold, most similar first."""
    unit = F.normalize(vectors.float(), dim=1)
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(unit), chunk):
        block = unit[start:start + chunk] @ unit.T                      # [chunk, N]
        rows = torch.arange(block.shape[0])[:, None] + start
        cols = torch.arange(block.shape[1])[None, :]
        hit = (block >= threshold) & (cols > rows)                     # each pair once, never a row with itself
        for i, j in hit.nonzero().tolist():
            pairs.append((i + start, j, float(block[i, j])))
    pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    return pairs
