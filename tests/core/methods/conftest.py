"""One 2-rank torchrun launch (gloo, CPU) shared by the methods whose losses use global-batch statistics."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

WORKER = str(Path(__file__).parents[2] / "helpers" / "methods_dist_worker.py")


@pytest.fixture(scope="session")
def two_rank_runs(tmp_path_factory) -> dict:
    """{method: {"losses", "state"}} after 2 training steps on 2 ranks (tests/helpers/methods_dist_worker.py)."""
    from ssl_core.training.launch import LaunchSpec, run_torchrun

    out = tmp_path_factory.mktemp("two-ranks") / "ranks.pt"
    run_torchrun(WORKER, [str(out)], LaunchSpec(nproc_per_node=2), module=False,
                 env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout_s=300)
    return torch.load(out, weights_only=True)
