"""One rank of distributed pretraining, and the stage-side launch of all of them.

The pretrain stage (stages/pretrain.py) calls `launch()` when pretrain.nproc_per_node x nnodes > 1.
It has already opened the stage's MLflow run; torchrun then starts this module once per rank:

    python -m torch.distributed.run ... -m ssl_core.stages.pretrain_worker --root R --handoff R/checkpoints/pretrain/dist

Every rank trains on its shard of each global batch (ssl_core.train); DistributedDataParallel
averages the gradients. Rank 0 alone touches the outside world: it logs per-epoch metrics into the
stage's run (MLFLOW_RUN_ID, MLFLOW_TRACKING_URI from the environment), writes the crash-safe
checkpoint (and restores it, sending the restored state to the other ranks), and hands the trained
encoder weights + per-epoch history back to the stage in <handoff>/result.pt. The stage writes the
outputs and logs the model, exactly as in a one-process run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ssl_core import distributed as dist_utils
from ssl_core.config import Params
from ssl_core.data.cache import atomic_torch_save
from ssl_core.train import TrainState

RUN_ID_ENV = "MLFLOW_RUN_ID"
HANDOFF_DIR = Path("checkpoints/pretrain/dist")   # in the workspace: shared by every node of a job
PARAMS_FILE, RESULT_FILE = "params.json", "result.pt"


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


def _mlflow_epoch_logger(run_id: str):
    """Per-epoch metrics into the stage's run, without starting/ending it (the stage owns its status)."""
    import mlflow

    from ssl_core.stages.pretrain import epoch_metrics

    def log_epoch(epoch: int, metrics: dict) -> None:
        mlflow.log_metrics(epoch_metrics(metrics), step=epoch, run_id=run_id)
    return log_epoch


def train_rank(params: Params, root: Path, handoff: Path, device: torch.device) -> None:
    from ssl_core.checkpoint import Checkpointer
    from ssl_core.data.cache import load_meta
    from ssl_core.stages.pretrain import CHECKPOINT_DIR, checkpoint_fingerprint, train_encoder

    lead = dist_utils.rank() == 0
    meta = load_meta(root / params.data.prepared_dir)
    run_id = os.environ.get(RUN_ID_ENV, "")
    checkpointer = RankZeroCheckpointer()
    if lead:
        inner = Checkpointer(root / CHECKPOINT_DIR, checkpoint_fingerprint(params, root, meta),
                             every_steps=params.pretrain.checkpoint_every)
        inner.metadata = {"run_id": run_id}
        checkpointer = RankZeroCheckpointer(inner)
    log_epoch = _mlflow_epoch_logger(run_id) if lead and run_id else None
    method, history = train_encoder(params, root, meta, device, checkpointer, log_epoch=log_epoch, lead=lead)
    if lead:
        state = _to_cpu(method.backbone.state_dict())
        atomic_torch_save({"backbone": state, "history": history}, handoff / RESULT_FILE)
    dist.barrier()   # nobody leaves (and tears the group down) before rank 0 has handed the result over


def _plain_logging() -> None:
    import logging

    from ssl_core.progress import log

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))   # the stage adds time and level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one rank of distributed pretraining (started by torchrun)")
    parser.add_argument("--root", type=Path, required=True, help="workspace root")
    parser.add_argument("--handoff", type=Path, required=True, help="folder with params.json; result.pt goes here")
    from ssl_core.stages.common import setup_torch

    args = parser.parse_args(argv)
    params = Params.model_validate_json((args.handoff / PARAMS_FILE).read_text())
    setup_torch(params.pretrain.device)   # cuDNN autotune / TF32 as in a one-process run
    device = dist_utils.init_from_env(params.pretrain.device)
    if dist_utils.rank() == 0:   # rank 0's progress lines; the stage streams them into its own log
        _plain_logging()
    try:
        train_rank(params, args.root, args.handoff, device)
    finally:
        dist_utils.shutdown()


def launch(params: Params, root: Path, run_id: str, on_line=None) -> tuple[dict, list[dict]]:
    """Run every rank through torchrun; return rank 0's (encoder state_dict, per-epoch history).

    Raises StageError with the failing rank's own error when any rank fails (see ssl_core.launch).
    """
    import mlflow

    from ssl_core.launch import LaunchSpec, RankFailed, run_torchrun
    from ssl_core.stages.common import StageError

    p = params.pretrain
    spec = LaunchSpec(p.nproc_per_node, p.nnodes, p.rdzv_endpoint, rdzv_id=f"ssl-pipeline-{run_id[:12]}")
    handoff = Path(root).resolve() / HANDOFF_DIR
    shutil.rmtree(handoff, ignore_errors=True)
    handoff.mkdir(parents=True)
    (handoff / PARAMS_FILE).write_text(params.model_dump_json())
    env = {**os.environ, RUN_ID_ENV: run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    # CPU ranks share the machine's cores; torchrun's own default would be 1 thread each.
    env.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // p.nproc_per_node, 1)))
    try:
        run_torchrun(__name__, ["--root", str(Path(root).resolve()), "--handoff", str(handoff)], spec,
                     env=env, on_line=on_line)
        result = torch.load(handoff / RESULT_FILE, weights_only=True, map_location="cpu")
    except RankFailed as err:
        raise StageError(f"pretrain: {err}") from err
    finally:
        shutil.rmtree(handoff, ignore_errors=True)
    return result["backbone"], result["history"]


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)(sys.argv[1:])
