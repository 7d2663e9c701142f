"""Distributed pretraining: one rank (run by torchrun), and `launch()` that starts all of them.

The pretrain stage calls `launch()` when nproc_per_node x nnodes > 1; torchrun then starts this
module once per rank:

    python -m torch.distributed.run ... -m ssl_core.recipes.distributed --handoff R/checkpoints/pretrain/dist

The handoff folder holds the job (recipe.json, job.json: prepared data, checkpoint folder and
fingerprint). Every rank trains on its shard of each global batch (ssl_core.training.loop);
DistributedDataParallel averages the gradients. Rank 0 alone touches the outside world: it writes
the crash-safe checkpoint (and restores it, broadcasting the restored state to the other ranks),
prints one EPOCH_MARKER line per epoch (the launcher turns it back into an on_epoch call, so the
stage records it; this module needs nothing beyond torch), and hands the trained encoder weights and
per-epoch history back in <handoff>/result.pt.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from ssl_core.fsutil import atomic_torch_save
from ssl_core.training import distributed as dist_utils
from ssl_core.training.loop import TrainState

RECIPE_FILE, JOB_FILE, RESULT_FILE = "recipe.json", "job.json", "result.pt"
WARM_START_FILE = "warm_start.pt"   # optional: ssl_core.recipes.warm_start.saved_method() to start from
EPOCH_MARKER = "ssl-pipeline-epoch "


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class RankZeroCheckpointer:
    """Rank 0 reads and writes the checkpoint; the other ranks get what rank 0 restored by broadcast
    (so they never touch the files, and need no shared disk for it) and never save."""

    def __init__(self, inner=None):
        self.inner = inner   # the real Checkpointer on rank 0, None elsewhere

    def restore(self, method, optimizer, scheduler) -> TrainState | None:
        payload: list = [None]
        state = None
        if self.inner is not None:
            state = self.inner.restore(method, optimizer, scheduler)
            if state is not None:
                payload = [_to_cpu({"method": method.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "state": dataclasses.asdict(state)})]
        dist.broadcast_object_list(payload, src=0)
        if self.inner is None and payload[0] is not None:
            method.load_state_dict(payload[0]["method"])
            optimizer.load_state_dict(payload[0]["optimizer"])
            scheduler.load_state_dict(payload[0]["scheduler"])
            state = TrainState(**payload[0]["state"])
        return state

    def due(self, state: TrainState, epoch_end: bool) -> bool:
        return self.inner is not None and self.inner.due(state, epoch_end)

    def save(self, method, optimizer, scheduler, state: TrainState) -> None:
        self.inner.save(method, optimizer, scheduler, state)


def _print_epoch(epoch: int, metrics: dict) -> None:
    print(EPOCH_MARKER + json.dumps({"epoch": epoch, "metrics": metrics}), flush=True)


def train_rank(handoff: Path, device: torch.device) -> None:
    from ssl_core.data.cache import load_meta
    from ssl_core.recipes import PretrainData, PretrainRecipe, build_method, pretrain_method
    from ssl_core.training.checkpoint import Checkpointer

    recipe = PretrainRecipe.from_json((handoff / RECIPE_FILE).read_text())
    job = json.loads((handoff / JOB_FILE).read_text())
    lead = dist_utils.rank() == 0
    checkpointer = RankZeroCheckpointer()
    if lead:
        inner = Checkpointer(Path(job["checkpoint_dir"]), job["fingerprint"], every_steps=job["checkpoint_every"])
        inner.metadata = dict(job.get("metadata", {}))
        checkpointer = RankZeroCheckpointer(inner)
    prepared = Path(job["prepared_dir"])
    data = PretrainData.load(prepared, load_meta(prepared)["num_classes"], lead=lead)
    method = build_method(recipe)
    if (handoff / WARM_START_FILE).exists():   # every rank the same start (a checkpoint still wins: restored later)
        from ssl_core.recipes.warm_start import warm_start

        report = warm_start(method, torch.load(handoff / WARM_START_FILE, weights_only=True, map_location="cpu"))
        if lead:
            print(f"warm start: {report.reason}", flush=True)
    method, history = pretrain_method(recipe, method, data, device, checkpointer,
                                      on_epoch=_print_epoch if lead else None,
                                      say_epoch=print if lead else None, say_step=print if lead else None)
    if lead:
        atomic_torch_save({"backbone": _to_cpu(method.backbone.state_dict()),
                           "method": _to_cpu(method.state_dict()), "history": history}, handoff / RESULT_FILE)
    dist.barrier()   # nobody leaves (and tears the group down) before rank 0 has handed the result over


def main(argv: list[str] | None = None) -> None:
    from ssl_core.recipes import PretrainRecipe
    from ssl_core.training.runtime import setup_torch

    parser = argparse.ArgumentParser(description="one rank of distributed pretraining (started by torchrun)")
    parser.add_argument("--handoff", type=Path, required=True, help="folder with recipe.json and job.json")
    args = parser.parse_args(argv)
    recipe = PretrainRecipe.from_json((args.handoff / RECIPE_FILE).read_text())
    setup_torch(recipe.device)   # cuDNN autotune / TF32 as in a one-process run
    device = dist_utils.init_from_env(recipe.device)
    try:
        train_rank(args.handoff, device)
    finally:
        dist_utils.shutdown()


@dataclasses.dataclass(frozen=True)
class Job:
    """Where a distributed pretraining reads and writes: shared by every node of the job."""
    prepared_dir: Path
    handoff_dir: Path
    checkpoint_dir: Path
    fingerprint: str
    checkpoint_every: int
    metadata: dict
    rdzv_id: str = "ssl-pipeline"


def launch(recipe, job: Job, nproc_per_node: int, nnodes: int = 1, rdzv_endpoint: str = "",
           on_line: Callable[[str], None] | None = None,
           on_epoch: Callable[[int, dict], None] | None = None, warm: dict | None = None) -> dict:
    """Run every rank through torchrun; return rank 0's {"backbone": encoder state_dict, "method": the
    whole method's state_dict, "history": per-epoch metrics}. warm: saved_method() every rank starts from.

    Raises ssl_core.training.launch.RankFailed with the failing rank's own error when any rank fails."""
    from ssl_core.training.launch import LaunchSpec, run_torchrun

    spec = LaunchSpec(nproc_per_node, nnodes, rdzv_endpoint, rdzv_id=job.rdzv_id)
    handoff = Path(job.handoff_dir).resolve()
    shutil.rmtree(handoff, ignore_errors=True)
    handoff.mkdir(parents=True)
    (handoff / RECIPE_FILE).write_text(recipe.to_json())
    (handoff / JOB_FILE).write_text(json.dumps({"prepared_dir": str(Path(job.prepared_dir).resolve()),
                                                "checkpoint_dir": str(Path(job.checkpoint_dir).resolve()),
                                                "fingerprint": job.fingerprint,
                                                "checkpoint_every": job.checkpoint_every,
                                                "metadata": job.metadata}))
    if warm is not None:
        atomic_torch_save(warm, handoff / WARM_START_FILE)
    env = dict(os.environ)
    # CPU ranks share the machine's cores; torchrun's own default would be 1 thread each.
    env.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // nproc_per_node, 1)))

    def route(line: str) -> None:
        at = line.find(EPOCH_MARKER)   # torchrun may prefix a rank's lines
        if at >= 0:
            if on_epoch:
                done = json.loads(line[at + len(EPOCH_MARKER):])
                on_epoch(done["epoch"], done["metrics"])
        elif on_line:
            on_line(line)

    try:
        run_torchrun(__name__, ["--handoff", str(handoff)], spec, env=env, on_line=route)
        result = torch.load(handoff / RESULT_FILE, weights_only=True, map_location="cpu")
    finally:
        shutil.rmtree(handoff, ignore_errors=True)
    return result


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)(sys.argv[1:])
