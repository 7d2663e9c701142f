"""Multi-process training: torchrun launcher, rank failures, and 2-rank == 1-process equivalence (CPU, gloo).

The torchrun tests start real worker processes (tests/helpers/dist_worker.py or the pretrain stage's worker);
each launch costs a few seconds of interpreter start-up per rank, so they are marked slow.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ssl_core.training import distributed as dist_utils
from ssl_core.training.launch import LaunchSpec, RankFailed, root_cause, run_torchrun, torchrun_command
from fixtures_repo import HELPERS

WORKER = str(HELPERS / "dist_worker.py")
TIMEOUT_S = 300   # a hang becomes a RankFailed after this, never a stuck test run


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


# --- launcher: command line and error reports --------------------------------------------------------

def test_torchrun_command_standalone_or_rendezvous():
    cmd = torchrun_command("ssl_core.recipes.distributed", ["--root", "."], LaunchSpec(2), "/tmp/logs")
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node"] and "--standalone" in cmd
    assert cmd[cmd.index("--max-restarts") + 1] == "0"
    assert cmd[-4:] == ["-m", "ssl_core.recipes.distributed", "--root", "."]
    multi = torchrun_command("w.py", [], LaunchSpec(8, nnodes=2, rdzv_endpoint="node0:29400"), "/tmp/l", module=False)
    assert "--standalone" not in multi and multi[-1] == "w.py"
    assert multi[multi.index("--rdzv-endpoint") + 1] == "node0:29400" and multi[multi.index("--nnodes") + 1] == "2"
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command("w.py", [], LaunchSpec(2, nnodes=2), "/tmp/l")


def _error_file(log_dir: Path, rank: int, message: str, timestamp: int) -> None:
    folder = log_dir / "job_x" / "attempt_0" / str(rank)
    folder.mkdir(parents=True)
    report = {"message": {"message": message, "extraInfo": {"py_callstack": "...", "timestamp": str(timestamp)}}}
    (folder / "error.json").write_text(json.dumps(report))


def test_root_cause_is_the_origin_not_a_peers_echo(tmp_path):
    assert root_cause(tmp_path) is None
    # rank 0's echo of the crash carries an EARLIER timestamp (clock granularity): still not the cause
    _error_file(tmp_path, 0, "RuntimeError: [gloo/pair.cc:561] Connection closed by peer [127.0.0.1]:1", 100)
    _error_file(tmp_path, 2, "ValueError: bad batch", 101)
    _error_file(tmp_path, 1, "KeyError: 'late'", 105)
    assert root_cause(tmp_path) == (2, "ValueError: bad batch")


# --- DDP safety: every trainable parameter gets a gradient in every step ----------------------------

def test_every_method_uses_all_its_trainable_parameters():
    """DistributedDataParallel runs with find_unused_parameters=False, which hangs or fails on a
    parameter without gradient; this guards every registered method (tiny models, one step)."""
    from ssl_core.methods import get_method_class, method_names
    from ssl_core.models import build_backbone

    for name in method_names():
        cls = get_method_class(name)
        backbone = "vit_tiny" if cls.backbone_family == "vit" else "resnet_narrow"
        torch.manual_seed(0)
        method = cls.build(build_backbone(backbone, 3, 16, True, 4, 2), {}, {}, (3, 16, 16))
        images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        loss, _ = method.loss(images, torch.Generator().manual_seed(0))
        loss.backward()
        unused = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f"{name}: trainable parameters without gradient: {unused[:5]}"


def test_single_process_helpers_are_no_ops():
    x = torch.arange(8)
    assert not dist_utils.is_distributed()
    assert dist_utils.shard_batch(x, 0, 1).tolist() == x.tolist()
    assert torch.equal(dist_utils.mean_across_ranks(torch.tensor(2.5)), torch.tensor(2.5))


def test_shards_of_every_step_partition_the_global_batch():
    """DistributedSampler-equivalent: per step each rank takes a contiguous, disjoint slice; over an
    epoch every sample of the (drop_last) epoch is used exactly once, and every rank runs the same steps."""
    from ssl_core.training.loop import epoch_order, steps_per_epoch

    n, global_batch, world = 50, 12, 3
    order = epoch_order(seed=0, epoch=0, n=n)
    steps = steps_per_epoch(n, global_batch)
    seen = []
    for step in range(steps):
        batch = order[step * global_batch:(step + 1) * global_batch]
        shards = [dist_utils.shard_batch(batch, r, world) for r in range(world)]
        assert all(len(s) == global_batch // world for s in shards)
        assert torch.equal(torch.cat(shards), batch)
        seen += torch.cat(shards).tolist()
    assert len(seen) == len(set(seen)) == steps * global_batch == 48


# --- real processes -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_ranks_take_the_same_step_as_one_process(tmp_path):
    """SimCLR and MoCo v2: one step with the global batch split over 2 gloo ranks == one process with
    the whole batch: same loss, same updated weights (1e-5), same MoCo queue (contents and order).
    And a 2-rank run resumed from a 1-process checkpoint continues exactly as the 1-process run."""
    from dist_worker import EpochOneCheckpointer, one_step, tiny_method, two_epochs

    out = tmp_path / "ranks.pt"
    straight = two_epochs(EpochOneCheckpointer(tmp_path / "ckpt"))   # leaves the epoch-1 checkpoint behind
    run_torchrun(WORKER, ["equivalence", str(out), str(tmp_path / "ckpt")], LaunchSpec(nproc_per_node=2),
                 module=False, env=_env(), timeout_s=TIMEOUT_S)
    distributed = torch.load(out, weights_only=True)
    for name in ("simclr", "moco"):
        single = one_step(name)
        initial = tiny_method(name).state_dict()
        assert distributed[name]["loss"] == pytest.approx(single["loss"], abs=1e-5)
        assert single["state"].keys() == distributed[name]["state"].keys()
        moved = 0
        for key, value in single["state"].items():
            torch.testing.assert_close(distributed[name]["state"][key], value, atol=1e-5, rtol=0, msg=f"{name}: {key}")
            moved += value.is_floating_point() and not torch.allclose(value, initial[key])
        assert moved > 10, f"{name}: the step changed almost nothing; the comparison would be vacuous"
    queue_1p, queue_2r = single["state"]["queue"], distributed["moco"]["state"]["queue"]
    assert torch.equal(single["state"]["queue_ptr"], distributed["moco"]["state"]["queue_ptr"])
    assert int(single["state"]["queue_ptr"]) == 16   # 2 views x global batch 8 keys were enqueued
    torch.testing.assert_close(queue_2r, queue_1p, atol=1e-5, rtol=0)
    # Resuming: rank 0 restores the 1-process checkpoint and broadcasts it; had rank 1 started from
    # fresh weights, the averaged step would differ from the uninterrupted 1-process run.
    resumed = distributed["resumed"]
    assert resumed["epochs"] == 2 and resumed["loss"] == pytest.approx(straight["loss"], abs=1e-5)
    for key, value in straight["state"].items():
        torch.testing.assert_close(resumed["state"][key], value, atol=1e-5, rtol=0, msg=f"resumed: {key}")


@pytest.mark.slow
def test_a_failing_rank_fails_the_launch_with_its_own_error():
    """Rank 1 raises while rank 0 waits in a collective: the launch ends (torchrun stops rank 0) and
    the error names rank 1 and its exception, not rank 0's 'connection closed' echo."""
    with pytest.raises(RankFailed, match=r"rank 1: ValueError: rank 1 got a bad input batch") as info:
        run_torchrun(WORKER, ["fail"], LaunchSpec(nproc_per_node=2), module=False, env=_env(), timeout_s=TIMEOUT_S)
    assert info.value.rank == 1 and info.value.exit_code == 1


@pytest.mark.slow
def test_a_hung_peer_times_out_instead_of_blocking_forever():
    """Rank 1 never joins; rank 0's collective gives up after the process-group timeout."""
    env = _env(**{dist_utils.TIMEOUT_ENV: "3"})
    with pytest.raises(RankFailed, match=r"rank 0: .*Timed out") as info:
        run_torchrun(WORKER, ["hang"], LaunchSpec(nproc_per_node=2), module=False, env=env, timeout_s=TIMEOUT_S)
    assert info.value.rank == 0
