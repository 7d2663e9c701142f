"""pretrain: self-supervised pretraining of the encoder on the unlabeled pool.

Outputs: models/encoder.pt (backbone state_dict), models/encoder.json (architecture + MLflow model
URI), metrics/pretrain.json, plots/pretrain.csv (per-epoch loss and kNN monitor accuracy).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from ssl_core import distributed as dist_utils
from ssl_core.config import Params
from ssl_core.data.cache import atomic_torch_save, load_meta, load_split
from ssl_core.evaluation import knn_accuracy_and_rank
from ssl_core.methods import get_method_class
from ssl_core.models import build_backbone
from ssl_core.progress import log
from ssl_core.stages.common import StageError, dataset_infos, setup_torch, write_json
from ssl_core.train import TrainConfig, pretrain

ENCODER_PT = Path("models/encoder.pt")
ENCODER_JSON = Path("models/encoder.json")
METRICS_JSON = Path("metrics/pretrain.json")
CURVE_CSV = Path("plots/pretrain.csv")
CHECKPOINT_DIR = Path("checkpoints/pretrain")


def encoder_spec(params: Params, meta: dict) -> dict:
    """Everything needed to rebuild the encoder architecture (stored beside the weights)."""
    p = params.pretrain
    return {"backbone": p.backbone, "in_channels": meta["channels"], "image_size": meta["image_size"],
            "small_stem": p.small_stem, "stem_stride": p.stem_stride, "width": p.width, "method": p.method}


def build_encoder(spec: dict) -> torch.nn.Module:
    return build_backbone(spec["backbone"], spec["in_channels"], spec["image_size"], spec["small_stem"], spec["width"],
                          spec.get("stem_stride", 1))


def check_method_fits_data(params: Params, meta: dict) -> None:
    """What params.yaml alone cannot tell (data.channels: auto): fail before any tracking or training."""
    method = params.pretrain.method
    if get_method_class(method).requires_color and meta["channels"] != 3:
        raise StageError(f"pretrain.method: {method!r} needs colour (3-channel) images but the prepared data has "
                         f"{meta['channels']} channel(s) (data.channels: {params.data.channels}); "
                         "pick another pretrain.method or import colour images")


def build_method(params: Params, meta: dict, seed: int | None = None):
    torch.manual_seed(params.seed if seed is None else seed)
    spec = encoder_spec(params, meta)
    cls = get_method_class(params.pretrain.method)
    try:
        return cls.build(build_encoder(spec), params.pretrain.method_params, params.pretrain.augment,
                         (meta["channels"], meta["image_size"], meta["image_size"]))
    except ValueError as err:
        raise StageError(str(err)) from None


def checkpoint_fingerprint(params: Params, root: Path, meta: dict) -> str:
    """What a checkpoint is only valid for: the training params and the data's identity.

    Knobs that do not change the trained weights (logging, checkpoint interval, kNN monitor, device)
    are left out, so e.g. a retry with another checkpoint_every still resumes."""
    from ssl_core.dvcops import dataset_md5s

    train_knobs = params.pretrain.model_dump(mode="json", exclude={"log_every", "checkpoint_every", "knn_k", "knn_every", "device",
                                                               "cache_on_device"})
    return json.dumps({"seed": params.seed, "data": params.data.model_dump(mode="json"), "pretrain": train_knobs,
                       "dvc_md5": dataset_md5s(root, params.data.raw_dir), "meta": meta}, sort_keys=True)


def train_config(params: Params, n_unlabeled: int, device: torch.device, cache_bytes: int = 0) -> TrainConfig:
    """The loop's settings; the auto ones resolved for `device` (cache_bytes: the unlabeled uint8 cache's size)."""
    p = params.pretrain
    cuda = device.type == "cuda"
    # seen here: torch 2.14's CPU convolution backward in NHWC aborts the process ("double free or
    # corruption"), and inductor's compiled backward reaches the same kernel
    if p.channels_last == "on" and not cuda:
        raise StageError("pretrain.channels_last: 'on' is for CUDA only (on CPU it crashed torch's "
                         "convolution backward in our tests); use 'auto' or 'off' on a CPU")
    if p.compile and not cuda:
        raise StageError("pretrain.compile: true is for CUDA only (on CPU the compiled convolution backward "
                         "crashed torch in our tests); set it to false on a CPU")
    return TrainConfig(epochs=p.epochs, batch_size=min(p.batch_size, n_unlabeled), optimizer=p.optimizer,
                       lr=p.lr, weight_decay=p.weight_decay, warmup_epochs=p.warmup_epochs, seed=params.seed,
                       device=str(device), log_every=p.log_every,
                       bf16=p.precision == "bf16" or (p.precision == "auto" and cuda),
                       channels_last=p.channels_last == "on" or (p.channels_last == "auto" and cuda),
                       compile=p.compile,
                       compile_augment=p.compile_augment == "on" or (p.compile_augment == "auto" and cuda),
                       cache_on_device=cache_on_device(p.cache_on_device, device, cache_bytes))


def cache_on_device(setting: str, device: torch.device, cache_bytes: int) -> bool:
    """Whether the unlabeled cache goes to the GPU once (auto: when it takes under 1/4 of the free memory).
    On a CPU the cache is in memory already, so every setting means the same."""
    if device.type != "cuda" or setting == "off":
        return False
    if setting == "on":
        return True
    return torch.cuda.is_available() and cache_bytes < torch.cuda.mem_get_info(device)[0] / 4


def train_encoder(params: Params, root: Path, meta: dict, device: torch.device, checkpointer,
                  log_epoch: Callable[[int, dict], None] | None = None, lead: bool = True):
    """Pretrain on this process's share of the data -> (method, per-epoch history).

    The one-process stage and every rank of a distributed run (stages/pretrain_worker.py) train
    through this. lead: this process runs the kNN monitor, logs progress and calls log_epoch (rank 0).
    """
    p = params.pretrain
    prepared = root / params.data.prepared_dir
    unlabeled = load_split(prepared, "unlabeled")
    method = build_method(params, meta)
    if p.sync_batchnorm and dist_utils.is_distributed():
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    on_epoch_end = None
    if lead:
        train, val = load_split(prepared, "train"), load_split(prepared, "val")

        def on_epoch_end(epoch: int, metrics: dict) -> None:
            monitor_knn(p, epoch, metrics, method, train, val, meta["num_classes"], device)
            log.info("pretrain: %s", epoch_line(p, epoch, metrics))
            if log_epoch:
                log_epoch(epoch, metrics)

    cfg = train_config(params, len(unlabeled), device, unlabeled.images.nbytes)
    history = pretrain(method, unlabeled.images, cfg, on_epoch_end=on_epoch_end,
                       checkpointer=checkpointer, progress=(lambda line: log.info("pretrain: %s", line)) if lead else None)
    return method, history


def run(params: Params, root: Path = Path(".")) -> dict:
    """Pretrain in this process, or (pretrain.nproc_per_node x nnodes > 1) on torchrun's ranks."""
    from ssl_core import tracking
    from ssl_core.checkpoint import Checkpointer

    d, p = params.data, params.pretrain
    distributed = p.nproc_per_node * p.nnodes > 1
    device = setup_torch(p.device)
    if distributed and p.sync_batchnorm and device.type != "cuda":
        raise StageError("pretrain.sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU version); "
                         "set it to false or train on GPUs")
    if distributed and device.type == "cuda" and p.nproc_per_node > torch.cuda.device_count():
        raise StageError(f"pretrain.nproc_per_node is {p.nproc_per_node} but this machine has "
                         f"{torch.cuda.device_count()} GPU(s); use one process per GPU")
    meta = load_meta(root / d.prepared_dir)
    check_method_fits_data(params, meta)
    checkpointer = Checkpointer(root / CHECKPOINT_DIR, checkpoint_fingerprint(params, root, meta),
                                every_steps=p.checkpoint_every)
    # Tracking is checked (stage_run -> setup) before any training; the checkpoint is removed only
    # after every output is written and every log call succeeded, so any failure resumes, not retrains.
    with tracking.stage_run("pretrain", params, dataset_infos(root, d.raw_dir, d.prepared_dir), root) as run:
        resume = checkpointer.resume_info()
        tracking.link_resumed_run(resume and resume.get("run_id"), resume["global_step"] if resume else 0)
        for done in (resume["history"] if resume else []):   # the crashed run's epochs, so this run has the whole curve
            tracking.mlflow.log_metrics(epoch_metrics(done), step=done["epoch"])
        checkpointer.metadata = {"run_id": run.info.run_id}
        spec = encoder_spec(params, meta)
        if distributed:   # rank 0 logs each epoch into this run and writes the checkpoints
            from ssl_core.stages.pretrain_worker import launch

            weights, history = launch(params, root, run.info.run_id, on_line=lambda line: log.info("%s", line))
            backbone = build_encoder(spec)
            backbone.load_state_dict(weights)
        else:
            method, history = train_encoder(params, root, meta, device, checkpointer,
                                            log_epoch=lambda e, m: tracking.mlflow.log_metrics(epoch_metrics(m), step=e))
            backbone = method.backbone
        backbone = backbone.cpu().eval()
        atomic_torch_save(backbone.state_dict(), root / ENCODER_PT)
        final = history[-1] if history else {}
        metrics = {"loss": final.get("loss"), "knn_accuracy": final.get("knn_accuracy"),
                   "feature_rank": final.get("feature_rank"),
                   "epochs": p.epochs, "seconds": sum(h["seconds"] for h in history)}
        model_uri = log_encoder_model(backbone, spec)
        write_json(root / ENCODER_JSON, {**spec, "run_id": run.info.run_id, "model_uri": model_uri})
        write_json(root / METRICS_JSON, metrics)
        (root / CURVE_CSV).parent.mkdir(parents=True, exist_ok=True)
        columns = ["epoch", "loss", "knn_accuracy", "feature_rank"]
        curve = [{k: h.get(k) for k in columns} for h in history]
        pd.DataFrame(curve, columns=columns).to_csv(root / CURVE_CSV, index=False)
        tracking.mlflow.log_artifact(str(root / CURVE_CSV), artifact_path="plots")
    checkpointer.clear()
    return metrics


def monitor_knn(p, epoch: int, metrics: dict, method: torch.nn.Module, train, val, num_classes: int,
                device: torch.device) -> None:
    """kNN monitor (labeled train -> val) and the val features' effective rank, every
    pretrain.knn_every epochs and after the last one.

    It is skipped in between because for cheap steps (MAE) it costs more than the epoch itself."""
    due = epoch == p.epochs or (p.knn_every > 0 and epoch % p.knn_every == 0)
    metrics["knn_accuracy"], metrics["feature_rank"] = (
        knn_accuracy_and_rank(method.backbone, train, val, num_classes, device, p.knn_k) if due else (None, None))
    method.train()


def epoch_line(p, epoch: int, metrics: dict) -> str:
    knn = metrics.get("knn_accuracy")
    knn_text = f" knn(val) {knn:.4f} feature rank {metrics['feature_rank']:.1f}" if knn is not None else ""
    return f"epoch {epoch}/{p.epochs} loss {metrics['loss']:.4f}{knn_text} ({metrics['seconds']:.1f}s)"


def epoch_metrics(metrics: dict) -> dict[str, float]:
    logged = {"loss": metrics["loss"], "knn_accuracy": metrics.get("knn_accuracy"),
              "feature_rank": metrics.get("feature_rank"), "lr": metrics["lr"],
              "epoch_seconds": metrics["seconds"]}
    return {k: v for k, v in logged.items() if v is not None}


def log_encoder_model(backbone: torch.nn.Module, spec: dict) -> str:
    from ssl_core.model_logging import log_torch_model

    example = torch.rand(2, spec["in_channels"], spec["image_size"], spec["image_size"])
    return log_torch_model(backbone, example, name="encoder")
