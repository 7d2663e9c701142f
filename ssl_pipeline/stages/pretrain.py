"""pretrain: self-supervised pretraining of the encoder on the unlabeled pool, from random init, from
existing encoder weights (pretrain.init: resolved before any work, recorded in MLflow and encoder.json), or
from a registered version's whole SSL method (retrain.start_from, a warm start: retrain sets it for one run;
start_mode reuse keeps that encoder without training).

Outputs: models/encoder.pt (backbone state_dict), models/encoder.json (architecture, the init's source
and SHA-256; the MLflow run and model URI go to models/logged_models.json), metrics/pretrain.json, plots/pretrain.csv (per-epoch loss and
kNN monitor accuracy).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ssl_core.data.cache import load_meta
from ssl_core.fsutil import atomic_torch_save, write_json
from ssl_core.models.spec import EncoderSpec
from ssl_core.recipes import (PretrainData, PretrainRecipe, build_method, check_init, check_method_fits_data,
                              epoch_metrics, pretrain_method)
from ssl_core.recipes.warm_start import saved_method, state_digest, warm_start
from ssl_core.training.checkpoint import Checkpointer
from ssl_core.training.runtime import setup_torch
from ssl_pipeline import outputs
from ssl_pipeline.config.schema import Params
from ssl_pipeline.errors import StageError, recipe_errors_as_stage_errors
from ssl_pipeline.progress import log
from ssl_pipeline.recipes import checkpoint_fingerprint, pretrain_recipe
from ssl_pipeline.tracking import encoders
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.tracking.datasets import dataset_infos
from ssl_pipeline.tracking.init_weights import log_init, resolve_init
from ssl_pipeline.tracking.models import log_torch_model, record_logged_model

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
                      fingerprint: str, run_id: str, start: dict | None) -> tuple[dict, list[dict]]:
    """Every rank through torchrun; rank 0's epochs are logged into this stage's run."""
    from ssl_core.training.launch import RankFailed
    from ssl_core.recipes.distributed import Job, launch

    p = params.pretrain
    job = Job(prepared_dir=root / params.data.prepared_dir, handoff_dir=root / outputs.DISTRIBUTED_HANDOFF_DIR,
              checkpoint_dir=checkpointer.directory, fingerprint=fingerprint,
              checkpoint_every=p.checkpoint_every, metadata=dict(checkpointer.metadata),
              rdzv_id=f"ssl-pipeline-{run_id[:12]}")
    try:
        result = launch(recipe, job, p.nproc_per_node, p.nnodes, p.rdzv_endpoint,
                        on_line=lambda line: log.info("pretrain: %s", line),
                        # called from the launcher's reader thread: name the run explicitly
                        on_epoch=lambda e, m: tracking.mlflow.log_metrics(epoch_metrics(m), step=e, run_id=run_id),
                        warm=start)
    except RankFailed as err:
        raise StageError(f"pretrain: {err}") from err
    return result["method"], result["history"]


def train_here(recipe: PretrainRecipe, prepared: Path, meta: dict, device: torch.device,
               checkpointer: Checkpointer, start: dict | None) -> tuple[dict, list[dict]]:
    data = PretrainData.load(prepared, meta["num_classes"])
    method = build_method(recipe)
    if start is not None:
        record_warm_start(method, start)
    method, history = pretrain_method(recipe, method, data, device, checkpointer,
                                      on_epoch=lambda e, m: tracking.mlflow.log_metrics(epoch_metrics(m), step=e),
                                      say_epoch=lambda line: log.info("pretrain: %s", line),
                                      say_step=lambda line: log.info("pretrain: %s", line))
    return method.cpu().state_dict(), history


def record_warm_start(method, start: dict) -> None:
    """Load what fits of the start (ssl_core.recipes.warm_start) into the freshly built method; say and tag
    what was loaded, and the encoder's digest before the first step (a resumed run restores its checkpoint
    afterwards, so it continues where it stopped)."""
    report = warm_start(method, start)
    log.info("pretrain: warm start from %s: %s", start["source"], report.reason)
    tracking.mlflow.set_tags({"warm_start.loaded": report.loaded, "warm_start.reason": report.reason[:500],
                              "warm_start.encoder_sha256_at_step_0": state_digest(method.backbone)})


def load_start(params: Params) -> dict | None:
    """retrain.start_from's saved method (None for a cold start), with its source; tagged on the run."""
    r = params.retrain
    if not r.start_from:
        return None
    saved, source = encoders.load_saved_method(r.start_from)
    tags = {"warm_start.from": r.start_from, "warm_start.from_run_id": source.run_id, "warm_start.mode": r.start_mode}
    if source.version is not None:
        tags.update({"warm_start.from_model": source.name, "warm_start.from_version": str(source.version)})
    tracking.mlflow.set_tags(tags)
    return {**saved, "source": source.describe()}


def reuse_start(recipe: PretrainRecipe, start: dict) -> tuple[dict, list[dict]]:
    """start_mode reuse (the drift gate): the start's encoder as this run's, untrained. Its architecture
    must be the one params.yaml asks for, or the classifiers would be built on the wrong network."""
    method = build_method(recipe)
    report = warm_start(method, start)
    if report.loaded == "nothing":
        raise StageError(f"retrain.start_mode: reuse cannot keep the encoder of {start['source']}: {report.reason}")
    log.info("pretrain: reusing the encoder of %s without pretraining (%s)", start["source"], report.reason)
    tracking.mlflow.set_tags({"warm_start.loaded": report.loaded, "warm_start.reason": "reused, not trained",
                              "warm_start.encoder_sha256_at_step_0": state_digest(method.backbone)})
    return method.state_dict(), []


def train(params: Params, recipe: PretrainRecipe, root: Path, checkpointer: Checkpointer, fingerprint: str,
          run_id: str, device: torch.device) -> tuple[torch.nn.Module, list[dict], int]:
    """The trained method (CPU), its per-epoch history and the epochs it trained: here, on torchrun's
    ranks, or none at all (start_mode reuse). The whole method state is logged for the next warm start."""
    p = params.pretrain
    start = load_start(params)
    reuse = start is not None and params.retrain.start_mode == "reuse"
    with recipe_errors_as_stage_errors():
        if reuse:
            state, history = reuse_start(recipe, start)
        elif p.nproc_per_node * p.nnodes > 1:
            state, history = train_distributed(params, recipe, root, checkpointer, fingerprint, run_id, start)
        else:
            prepared = root / params.data.prepared_dir
            state, history = train_here(recipe, prepared, load_meta(prepared), device, checkpointer, start)
    method = build_method(recipe)
    method.load_state_dict(state)
    encoders.log_method_state(saved_method(method, recipe.encoder))
    return method, history, 0 if reuse else p.epochs


def run(params: Params, root: Path = Path(".")) -> dict:
    """Pretrain in this process, or (pretrain.nproc_per_node x nnodes > 1) on torchrun's ranks."""
    d, p = params.data, params.pretrain
    distributed = p.nproc_per_node * p.nnodes > 1
    device = setup_torch(p.device)
    if distributed:
        check_distributed(params, device)
    prepared = root / d.prepared_dir
    meta = load_meta(prepared)
    init = resolve_init(p.init, root)
    recipe = pretrain_recipe(params, meta, init.path if init else "")
    with recipe_errors_as_stage_errors():
        for note in check_method_fits_data(recipe, f"data.channels: {params.data.channels}"):
            log.info("pretrain: %s", note)
        report = check_init(recipe, p.init)
    if init is not None:
        log.info("pretrain: the encoder starts from %s (%s, sha256 %s)", init.source, init.resolved, init.sha256[:12])
        for note in report.notes:
            log.info("pretrain: init: %s", note)
    fingerprint = checkpoint_fingerprint(params, root, meta, init.sha256 if init else None)
    checkpointer = Checkpointer(root / outputs.PRETRAIN_CHECKPOINT_DIR, fingerprint, every_steps=p.checkpoint_every)
    # Tracking is checked (stage_run -> setup) before any training; the checkpoint is removed only
    # after every output is written and every log call succeeded, so any failure resumes, not retrains.
    with tracking.stage_run("pretrain", params, dataset_infos(root, d.raw_dir, d.prepared_dir), root) as run:
        resume = checkpointer.resume_info()
        tracking.link_resumed_run(resume and resume.get("run_id"), resume["global_step"] if resume else 0)
        for done in (resume["history"] if resume else []):   # the crashed run's epochs: the whole curve here
            tracking.mlflow.log_metrics(epoch_metrics(done), step=done["epoch"])
        checkpointer.metadata = {"run_id": run.info.run_id}
        if init is not None:
            log_init(init, report.notes)
        method, history, epochs = train(params, recipe, root, checkpointer, fingerprint, run.info.run_id, device)
        metrics = write_outputs(root, recipe.encoder, method.backbone.cpu().eval(), history, run.info.run_id, epochs,
                                init.record() if init else None)
    checkpointer.clear()
    return metrics


def write_outputs(root: Path, spec: EncoderSpec, backbone: torch.nn.Module, history: list[dict], run_id: str,
                  epochs: int, init: dict | None = None) -> dict:
    atomic_torch_save(backbone.state_dict(), root / outputs.ENCODER_PT)
    final = history[-1] if history else {}
    # Only what the same data, params, code and thread count reproduce: DVC hashes these files into
    # dvc.lock. The wall-clock time and the run id go to MLflow (and logged_models.json) instead.
    metrics = {"loss": final.get("loss"), "knn_accuracy": final.get("knn_accuracy"),
               "feature_rank": final.get("feature_rank"), "epochs": epochs}
    tracking.mlflow.log_metric("pretrain_seconds", sum(h["seconds"] for h in history))
    example = torch.rand(2, spec.in_channels, spec.image_size, spec.image_size)
    model_uri = log_torch_model(backbone, example, name="encoder")
    write_json(root / outputs.ENCODER_JSON, {**spec.to_dict(), "init": init})
    record_logged_model(root, root / outputs.ENCODER_PT, run_id, model_uri)
    write_json(root / outputs.PRETRAIN_METRICS_JSON, metrics)
    curve = [{k: h.get(k) for k in CURVE_COLUMNS} for h in history]
    (root / outputs.CURVE_CSV).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(curve, columns=CURVE_COLUMNS).to_csv(root / outputs.CURVE_CSV, index=False)
    tracking.mlflow.log_artifact(str(root / outputs.CURVE_CSV), artifact_path="plots")
    return metrics
