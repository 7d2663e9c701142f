"""Comparing a 2-rank run (tests/core/methods/conftest.py's two_rank_runs) with one process."""
from __future__ import annotations

import pytest
import torch


def assert_two_ranks_match_one_process(name: str, distributed: dict) -> None:
    """Same losses and states; and per tensor that moved, the two updates (state - initial) agree to 0.1 % in
    norm, so a gradient scaled by the number of ranks cannot hide under an absolute tolerance."""
    from methods_dist_worker import tiny_method, two_steps

    single, initial = two_steps(name), tiny_method(name).state_dict()
    assert distributed["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert single["state"].keys() == distributed["state"].keys()
    moved = 0
    for key, value in single["state"].items():
        other = distributed["state"][key]
        if not value.is_floating_point():
            assert torch.equal(other, value), key
            continue
        torch.testing.assert_close(other, value, atol=1e-5, rtol=1e-4, msg=f"{name}: {key}")
        update, update_2r = value - initial[key], other - initial[key]
        if update.norm() > 1e-4:   # below: rounding noise (e.g. a bias that a normalisation cancels)
            assert (update_2r - update).norm() <= 1e-3 * update.norm(), f"{name}: update of {key}"
            moved += 1
    assert moved > 10, f"{name}: the steps changed almost nothing; the comparison would be vacuous"
