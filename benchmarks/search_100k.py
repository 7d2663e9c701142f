"""Exact cosine search at 100k vectors: torch (what ssl_core.embeddings.search uses) against faiss-cpu's
IndexFlatIP, for the two jobs of `ssl-pipeline similar`: top-10 neighbours of 1,000 query images among 100k, and
near-duplicates (each vector's nearest other vector, all pairs of --dup-n vectors). Prints JSON: wall and CPU
seconds per job, and whether both libraries return the same neighbours.

    python benchmarks/search_100k.py [--n 100000] [--dims 128 512] [--threads 2]

faiss-cpu is not a dependency of the project; install it where this script can import it
(e.g. `pip install --target /tmp/faiss faiss-cpu` and PYTHONPATH=$PYTHONPATH:/tmp/faiss).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import torch

from ssl_core.embeddings.search import top_k_cosine


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), _cpu()
    out = fn()
    return out, round(time.perf_counter() - wall, 2), round(_cpu() - cpu, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dup-n", type=int, default=20_000, help="vectors in the near-duplicate (all pairs) job")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    results = {"n": args.n, "threads": args.threads, "load": os.getloadavg(), "rows": []}
    for dim in args.dims:
        base = torch.randn(args.n, dim, generator=torch.Generator().manual_seed(dim))
        queries = base[:args.queries] + 0.1 * torch.randn(args.queries, dim)
        unit = torch.nn.functional.normalize(base, dim=1).numpy().astype(np.float32)
        q_unit = torch.nn.functional.normalize(queries, dim=1).numpy().astype(np.float32)
        (t_sim, t_idx), t_wall, t_cpu = timed(lambda: top_k_cosine(queries, base, 10))
        index, build_wall, build_cpu = timed(lambda: (lambda ix: (ix.add(unit), ix)[1])(faiss.IndexFlatIP(dim)))
        (f_sim, f_idx), f_wall, f_cpu = timed(lambda: index.search(q_unit, 10))
        same = float((torch.from_numpy(f_idx) == t_idx).float().mean())
        sub = base[:args.dup_n]
        small = faiss.IndexFlatIP(dim)
        small.add(unit[:args.dup_n])
        (_, t_all), ta_wall, ta_cpu = timed(lambda: top_k_cosine(sub, sub, 1, chunk=2048, exclude_self=True))
        (_, f_all), fa_wall, fa_cpu = timed(lambda: small.search(unit[:args.dup_n], 2))
        results["rows"].append({"dim": dim, "top10_1000_queries": {"torch": [t_wall, t_cpu], "faiss": [f_wall, f_cpu],
                                                                    "faiss_index_build": [build_wall, build_cpu],
                                                                    "same_neighbours": same},
                                f"nearest_other_all_{args.dup_n}": {"torch": [ta_wall, ta_cpu], "faiss": [fa_wall, fa_cpu]}})
        print(json.dumps(results["rows"][-1]), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
