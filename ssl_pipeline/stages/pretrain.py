"""pretrain: self-supervised pretraining of the encoder on the unlabeled pool.

Outputs: models/encoder.pt (backbone state_dict), models/encoder.json (architecture + MLflow model
URI), metrics/pretrain.json, plots/pretrain.csv (per-epoch loss and kNN monitor accuracy).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ssl_core.data.cache import load_meta
from ssl_core.fsutil import atomic_torch_save, write_json
from ssl_core.models.spec import EncoderSpec, build_encoder
from ssl_core.recipes import (PretrainData, PretrainRecipe, build_method, check_method_fits_data, epoch_metrics,
                              pretrain_method)
from ssl_core.training.checkpoint import Checkpointer
from ssl_core.training.runtime import setup_torch
from ssl_pipeline import outputs
from ssl_pipeline.config.schema import Params
from ssl_pipeline.errors import StageError, recipe_errors_as_stage_errors
from ssl_pipeline.progress import log
from ssl_pipeline.recipes import checkpoint_fingerprint, pretrain_recipe
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.tracking.datasets import dataset_infos
from ssl_pipeline.tracking.models import log_torch_model

CURVE_COLUMNS = ["epoch", "loss", "knn_accuracy", "feature_rank"]


def check_distributed(params: Params, device: torch.device) -> None:
    p = params.pretrain
    if p.sync_batchnorm and device.type != "cuda":
        raise StageError("pretrain.sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU version); "
                         "set it to false or train on GPUs")
    if device.type == "cuda" and p.nproc_per_node > torch.cuda.device_count():
        raise StageError(f"pretrain.nproc_per_node is {p.nproc_per_node} but this machine has "
                         f"{torch.cuda.device_count()} GPU(s); use one process per GPU")


def train_distributed(params: Params, recipe: PretrainRecipe, root: Path, checkpointer: Checkpointer,
                      fingerprint: str, run_id: str) -> tuple[torch.nn.Module, list[dict]]:
    """Every rank through torchrun; rank 0's epochs are logged into this stage's run."""
    from ssl_core.training.launch import RankFailed
    from ssl_core.recipes.distributed import Job, launch

    p = params.pretrain
    job = Job(prepared_dir=root / params.data.prepared_dir, handoff_dir=root / outputs.DISTRIBUTED_HANDOFF_DIR,
              checkpoint_dir=checkpointer.directory, fingerprint=fingerprint,
              checkpoint_every=p.checkpoint_every, metadata=dict(checkpointer.metadata),
              rdzv_id=f"ssl-pipeline-{run_id[:12]}")
    try:
        weights, history = launch(recipe, job, p.nproc_per_node, p.nnodes, p.rdzv_endpoint,
                                  on_line=lambda line: log.info("pretrain: %s", line),
                                  # called from the launcher's reader thread: name the run explicitly
                                  on_epoch=lambda e, m: tracking.mlflow.log_metrics(epoch_metrics(m), step=e,
                                                                                    run_id=run_id))
    except RankFailed as err:
        raise StageError(f"pretrain: {err}") from err
    backbone = build_encoder(recipe.encoder)
    backbone.load_state_dict(weights)
    return backbone, history


def train_here(recipe: PretrainRecipe, prepared: Path, meta: dict, device: torch.device,
               checkpointer: Checkpointer) -> tuple[torch.nn.Module, list[dict]]:
    data = PretrainData.load(prepared, meta["num_classes"])
    method, history = pretrain_method(recipe, build_method(recipe), data, device, checkpointer,
                                      on_epoch=lambda e, m: tracking.mlflow.log_metrics(epoch_metrics(m), step=e),
                                      say_epoch=lambda line: log.info("pretrain: %s", line),
                                      say_step=lambda line: log.info("pretrain: %s", line))
    return method.backbone, history


def run(params: Params, root: Path = Path(".")) -> dict:
    """Pretrain in this process, or (pretrain.nproc_per_node x nnodes > 1) on torchrun's ranks."""
    d, p = params.data, params.pretrain
    distributed = p.nproc_per_node * p.nnodes > 1
    device = setup_torch(p.device)
    if distributed:
        check_distributed(params, device)
    prepared = root / d.prepared_dir
    meta = load_meta(prepared)
    recipe = pretrain_recipe(params, meta)
    with recipe_errors_as_stage_errors():
        for note in check_method_fits_data(recipe, f"data.channels: {params.data.channels}"):
            log.info("pretrain: %s", note)
    fingerprint = checkpoint_fingerprint(params, root, meta)
    checkpointer = Checkpointer(root / outputs.PRETRAIN_CHECKPOINT_DIR, fingerprint, every_steps=p.checkpoint_every)
    # Tracking is checked (stage_run -> setup) before any training; the checkpoint is removed only
    # after every output is written and every log call succeeded, so any failure resumes, not retrains.
    with tracking.stage_run("pretrain", params, dataset_infos(root, d.raw_dir, d.prepared_dir), root) as run:
        resume = checkpointer.resume_info()
        tracking.link_resumed_run(resume and resume.get("run_id"), resume["global_step"] if resume else 0)
        for done in (resume["history"] if resume else []):   # the crashed run's epochs: the whole curve here
            tracking.mlflow.log_metrics(epoch_metrics(done), step=done["epoch"])
        checkpointer.metadata = {"run_id": run.info.run_id}
        with recipe_errors_as_stage_errors():
            if distributed:
                backbone, history = train_distributed(params, recipe, root, checkpointer, fingerprint,
                                                      run.info.run_id)
            else:
                backbone, history = train_here(recipe, prepared, meta, device, checkpointer)
        metrics = write_outputs(root, recipe.encoder, backbone.cpu().eval(), history, run.info.run_id, p.epochs)
    checkpointer.clear()
    return metrics


def write_outputs(root: Path, spec: EncoderSpec, backbone: torch.nn.Module, history: list[dict], run_id: str,
                  epochs: int) -> dict:
    atomic_torch_save(backbone.state_dict(), root / outputs.ENCODER_PT)
    final = history[-1] if history else {}
    metrics = {"loss": final.get("loss"), "knn_accuracy": final.get("knn_accuracy"),
               "feature_rank": final.get("feature_rank"), "epochs": epochs,
               "seconds": sum(h["seconds"] for h in history)}
    example = torch.rand(2, spec.in_channels, spec.image_size, spec.image_size)
    model_uri = log_torch_model(backbone, example, name="encoder")
    write_json(root / outputs.ENCODER_JSON, {**spec.to_dict(), "run_id": run_id, "model_uri": model_uri})
    write_json(root / outputs.PRETRAIN_METRICS_JSON, metrics)
    curve = [{k: h.get(k) for k in CURVE_COLUMNS} for h in history]
    (root / outputs.CURVE_CSV).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(curve, columns=CURVE_COLUMNS).to_csv(root / outputs.CURVE_CSV, index=False)
    tracking.mlflow.log_artifact(str(root / outputs.CURVE_CSV), artifact_path="plots")
    return metrics
