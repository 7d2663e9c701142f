"""The method comparison behind flows/compare.py: every method in compare.methods pretrained on the
same prepared data with the same budget, each evaluated as the evaluate stage does (kNN, linear probe
and fine-tuning at every label fraction and seed, accuracy on the test split), next to two baselines
of each architecture used: `random` (kNN + linear probe on a randomly initialised encoder) and
`scratch` (supervised training from random init with finetune's budget).

The building blocks are the stages' own (build_method, train_config, fit_cell, knn_rows): a method
compared here trains and evaluates exactly as the pipeline would with pretrain.method set to it.
One MLflow run "compare" is the parent; every method and baseline is a nested child run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlflow
import torch

from ssl_core import tracking
from ssl_core.augment import AugmentConfig
from ssl_core.config import Params, compare_backbone, validate
from ssl_core.data.cache import Split, load_fractions, load_meta, load_split
from ssl_core.evaluation import accuracy, effective_rank, extract_features
from ssl_core.methods import get_method_class
from ssl_core.progress import log
from ssl_core.stages.common import dataset_infos, setup_torch
from ssl_core.stages.evaluate import knn_rows
from ssl_core.stages.finetune import cell_seed, fit_cell, scratch_encoder
from ssl_core.stages.pretrain import (build_encoder, build_method, checkpoint_fingerprint, encoder_spec,
                                      epoch_line, epoch_metrics, monitor_knn, train_config)
from ssl_core.train import pretrain

CHECKPOINT_DIR = Path("checkpoints/compare")
RESULT_NAME = "result.json"   # a finished method's rows, kept until the comparison's report is published
BASELINES = ("random", "scratch")
OK = "ok"
Note = Callable[[str], None]


@dataclass
class Entry:
    """One method of the plan: its backbone, and why it is skipped (None: it runs)."""
    method: str
    backbone: str
    skip_reason: str | None = None


@dataclass
class Data:
    meta: dict
    unlabeled: Split
    train: Split
    val: Split
    test: Split
    fractions: dict
    infos: dict   # dataset name -> {path, DVC md5, manifest}: the MLflow dataset inputs


def budget(params: Params, method: str | None = None) -> int:
    """Pretraining epochs of `method`: compare.epochs when set (one budget for all, e.g. a quick run),
    else compare.method_epochs[method], else pretrain.epochs."""
    c = params.compare
    return c.epochs or c.method_epochs.get(method) or params.pretrain.epochs


def budget_text(params: Params) -> str:
    """'30 epochs at batch 64 (mae: 100 epochs, batch 256)': the pretraining budget the report title
    and the parent run's tag show, with each method's own epochs and batch size."""
    c = params.compare
    own = []
    for m in c.methods:
        parts = [f"{c.method_epochs[m]} epochs"] if not c.epochs and m in c.method_epochs else []
        parts += [f"batch {c.method_batch_size[m]}"] if m in c.method_batch_size else []
        own += [f"{m}: {', '.join(parts)}"] if parts else []
    text = f"{budget(params)} epochs at batch {params.pretrain.batch_size}"
    return text + (f" ({'; '.join(own)})" if own else "")


def method_knobs(params: Params, method: str) -> dict:
    """compare.method_params[method]; else pretrain.method_params for the pipeline's own method; else {}."""
    if method in params.compare.method_params:
        return dict(params.compare.method_params[method])
    return dict(params.pretrain.method_params) if method == params.pretrain.method else {}


def params_for(params: Params, method: str) -> Params:
    """The params the pipeline would run with pretrain.method = `method` under the comparison's budget."""
    raw = params.model_dump(mode="json")
    raw["pretrain"].update(method=method, backbone=compare_backbone(params, method), epochs=budget(params, method),
                           method_params=method_knobs(params, method),
                           batch_size=params.compare.method_batch_size.get(method, params.pretrain.batch_size))
    return validate(raw)


def plan(params: Params, meta: dict) -> list[Entry]:
    """Every listed method with its backbone; colour-only methods are skipped on grayscale data."""
    entries = []
    for name in params.compare.methods:
        reason = None
        if get_method_class(name).requires_color and meta["channels"] != 3:
            reason = f"skipped: needs colour images (the prepared data has {meta['channels']} channel)"
        entries.append(Entry(name, compare_backbone(params, name), reason))
    return entries


def baseline_backbones(params: Params, entries: list[Entry]) -> list[str]:
    """One random and one scratch baseline per architecture that a compared method uses."""
    used = [e.backbone for e in entries if e.skip_reason is None]
    return sorted(set(used)) or [params.pretrain.backbone]


def status_row(method: str, backbone: str, status: str) -> dict:
    """The one report row of a method that produced no accuracies (skipped or failed)."""
    return {"method": method, "backbone": backbone, "protocol": "", "label_fraction": None, "seed": None,
            "accuracy": None, "pretrain_seconds": None, "status": status}


def load_data(params: Params, root: Path) -> Data:
    d = params.data
    prepared = root / d.prepared_dir
    return Data(load_meta(prepared), *(load_split(prepared, s) for s in ("unlabeled", "train", "val", "test")),
                load_fractions(prepared), dataset_infos(root, d.raw_dir, d.prepared_dir))


@contextlib.contextmanager
def parent_run(params: Params, root: Path, overrides: list[str] | None, flow_run_id: str) -> Iterator[str]:
    """The parent MLflow run "compare" (created through the client, so child runs can start in any
    thread); its id is exported as SSL_PIPELINE_PARENT_RUN_ID for the children and the prepare stage."""
    exp_id = tracking.setup(params.tracking.experiment, root)
    saved = {k: os.environ.get(k) for k in (tracking.PARENT_ENV, tracking.FLOW_RUN_ENV, tracking.OVERRIDES_ENV)}
    os.environ[tracking.FLOW_RUN_ENV] = flow_run_id
    if overrides:
        os.environ[tracking.OVERRIDES_ENV] = json.dumps(overrides)
    client = tracking.client()
    tags = {**tracking.run_tags("compare", root), "compare.methods": ",".join(params.compare.methods),
            "compare.epochs": budget_text(params)}
    run = client.create_run(exp_id, run_name="compare", tags=tags)
    status = "FAILED"
    try:
        items = [mlflow.entities.Param(k, ("" if v is None else str(v))[:6000]) for k, v in params.flat().items()]
        for i in range(0, len(items), 100):   # MLflow caps params per batch
            client.log_batch(run.info.run_id, params=items[i:i + 100])
        os.environ[tracking.PARENT_ENV] = run.info.run_id
        yield run.info.run_id
        status = "FINISHED"
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        client.set_terminated(run.info.run_id, status)


def child_env() -> dict[str, str]:
    """The tracking context a stage subprocess (DVC) needs to nest its run under the parent."""
    keys = (tracking.PARENT_ENV, tracking.FLOW_RUN_ENV, tracking.OVERRIDES_ENV)
    return {"MLFLOW_TRACKING_URI": tracking.tracking_uri(), **{k: os.environ[k] for k in keys if os.environ.get(k)}}


def run_method(params: Params, root: Path, method: str, note: Note = log.info) -> list[dict]:
    """Pretrain `method` (resuming from its checkpoint after a failed attempt), evaluate it, return its rows.
    A method an interrupted comparison already finished, with the same params and data, is not redone."""
    from ssl_core.checkpoint import Checkpointer

    mp = params_for(params, method)
    data = load_data(mp, root)
    fingerprint = result_fingerprint(mp, root, data.meta, method)
    with tracking.stage_run(f"compare-{method}", mp, data.infos, root) as run:
        mlflow.set_tags({"compare.method": method, "compare.backbone": mp.pretrain.backbone})
        finished = load_finished(root, method, fingerprint)
        if finished is not None:
            return reuse_finished(method, finished, note)
        device = setup_torch(mp.pretrain.device)
        checkpointer = Checkpointer(root / CHECKPOINT_DIR / method, checkpoint_fingerprint(mp, root, data.meta),
                                    every_steps=mp.pretrain.checkpoint_every)
        ssl = build_method(mp, data.meta)
        mlflow.log_params({f"method_params.{k}": str(v)[:6000] for k, v in ssl.describe().items() if k != "method"})
        encoder, seconds, rank = pretrain_encoder(mp, ssl, data, device, checkpointer, run.info.run_id, note)
        mlflow.log_metrics({"pretrain_seconds": seconds, "feature_rank": rank})
        rows = knn_rows(method, encoder.to(device), data.train, data.test, data.fractions, data.meta["num_classes"],
                        mp.evaluate.knn_k, device, init="ssl")
        rows += fit_rows(mp, method, list(mp.finetune.protocols), lambda seed: encoder, data, device, note)
        rows = finish_rows(rows, mp.pretrain.backbone, seconds, rank)
        save_finished(root, method, fingerprint, rows, run.info.run_id)
    checkpointer.clear()   # only once everything is evaluated and logged: a failed attempt resumes
    return rows


# --- finished results: an interrupted comparison resumes after its last finished method ---------------

def result_fingerprint(params: Params, root: Path, meta: dict, name: str, backbones: list[str] = ()) -> str:
    """What a method's (or baseline's) rows depend on: the training params and data (as for its
    checkpoint), the evaluation settings, and for a baseline its architectures."""
    body = json.dumps({"name": name, "training": checkpoint_fingerprint(params, root, meta), "backbones": list(backbones),
                       "finetune": params.finetune.model_dump(mode="json"),
                       "evaluate": params.evaluate.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _result_path(root: Path, name: str) -> Path:
    return root / CHECKPOINT_DIR / name / RESULT_NAME


def save_finished(root: Path, name: str, fingerprint: str, rows: list[dict], run_id: str) -> None:
    from ssl_core.checkpoint import atomic_write_bytes

    body = json.dumps({"fingerprint": fingerprint, "run_id": run_id, "rows": rows})
    atomic_write_bytes(body.encode(), _result_path(root, name))


def load_finished(root: Path, name: str, fingerprint: str) -> dict | None:
    """The saved {fingerprint, run_id, rows} of `name` when it matches `fingerprint`, else None."""
    try:
        saved = json.loads(_result_path(root, name).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint else None


def reuse_finished(name: str, finished: dict, note: Note) -> list[dict]:
    """Log a finished result into the active child run (tagged with the run that measured it)."""
    note(f"compare {name}: finished by run {finished['run_id']} of an interrupted comparison "
         "with the same params and data; its results are reused")
    mlflow.set_tag("compare.reused_from_run_id", finished["run_id"])
    rows = finished["rows"]
    if rows and rows[0]["pretrain_seconds"]:   # a method's rows share them; a baseline has none
        mlflow.log_metrics({"pretrain_seconds": rows[0]["pretrain_seconds"], "feature_rank": rows[0]["feature_rank"]})
    log_rows(rows)
    return rows


def clear_finished(root: Path) -> None:
    """Called once the comparison's report is published: the next comparison measures afresh."""
    for path in (root / CHECKPOINT_DIR).glob(f"*/{RESULT_NAME}"):
        path.unlink(missing_ok=True)


def pretrain_encoder(mp: Params, ssl: torch.nn.Module, data: Data, device: torch.device, checkpointer, run_id: str,
                     note: Note) -> tuple[torch.nn.Module, float, float]:
    """The pretrain stage's loop, kNN monitor and per-epoch MLflow metrics.
    Returns (encoder, seconds, the val features' effective rank after the last epoch)."""
    p = mp.pretrain
    resume = checkpointer.resume_info()
    tracking.link_resumed_run(resume and resume.get("run_id"), resume["global_step"] if resume else 0)
    for done in (resume["history"] if resume else []):   # the failed attempt's epochs: the whole curve here
        mlflow.log_metrics(epoch_metrics(done), step=done["epoch"])
    checkpointer.metadata = {"run_id": run_id}

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        monitor_knn(p, epoch, metrics, ssl, data.train, data.val, data.meta["num_classes"], device)
        note(f"compare {p.method}: {epoch_line(p, epoch, metrics)}")
        mlflow.log_metrics(epoch_metrics(metrics), step=epoch)

    history = pretrain(ssl, data.unlabeled.images, train_config(mp, len(data.unlabeled), device),
                       on_epoch_end=on_epoch_end, checkpointer=checkpointer,
                       progress=lambda line: log.info("compare %s: %s", p.method, line))
    return ssl.backbone.eval(), float(sum(h["seconds"] for h in history)), history[-1]["feature_rank"]


def fit_rows(mp: Params, method: str, protocols: list[str], start: Callable[[int], torch.nn.Module], data: Data,
             device: torch.device, note: Note, pretrained: bool = True) -> list[dict]:
    """Test accuracy of a classifier per (label fraction, seed, protocol); start(run_seed) gives its encoder."""
    augment = AugmentConfig().with_overrides(mp.finetune.augment)
    rows = []
    for frac, seeds in data.fractions.items():
        for seed, idx in seeds.items():
            subset, run_seed = data.train.subset(idx), cell_seed(mp, seed)
            for protocol in protocols:
                model, _ = fit_cell(mp, protocol, start(run_seed), subset, data.val, data.meta["num_classes"],
                                    augment, device, run_seed, pretrained)
                acc = accuracy(model.to(device), data.test, device)
                note(f"compare {method}/{protocol}: fraction {frac} seed {seed} ({len(subset)} labels) test acc {acc:.4f}")
                rows.append({"method": method, "protocol": protocol, "label_fraction": float(frac),
                             "seed": int(seed), "accuracy": acc})
    return rows


def finish_rows(rows: list[dict], backbone: str, seconds: float, feature_rank: float | None) -> list[dict]:
    """Add backbone, pretraining time, feature rank and status; log each accuracy to the active (child) run."""
    out = [{"method": r["method"], "backbone": backbone, "protocol": r["protocol"], "label_fraction": r["label_fraction"],
            "seed": r["seed"], "accuracy": r["accuracy"], "pretrain_seconds": seconds, "feature_rank": feature_rank,
            "status": OK} for r in rows]
    log_rows(out)
    return out


def log_rows(rows: list[dict]) -> None:
    for r in rows:
        mlflow.log_metric(f"test_accuracy.{r['backbone']}.{r['protocol']}.{r['label_fraction']:g}.{r['seed']}",
                          r["accuracy"])


def run_baseline(params: Params, root: Path, kind: str, backbones: list[str], note: Note = log.info) -> list[dict]:
    """`random`: kNN + linear probe on a randomly initialised encoder; `scratch`: the encoder trained
    from random init on the labels with finetune's budget. One per backbone, one child run."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; allowed: {', '.join(BASELINES)}")
    data = load_data(params, root)
    fingerprint = result_fingerprint(params, root, data.meta, kind, backbones)
    rows: list[dict] = []
    with tracking.stage_run(f"compare-{kind}", params, data.infos, root) as run:
        mlflow.set_tags({"compare.method": kind, "compare.backbone": ",".join(backbones)})
        finished = load_finished(root, kind, fingerprint)
        if finished is not None:
            return reuse_finished(kind, finished, note)
        device = setup_torch(params.pretrain.device)
        for backbone in backbones:
            spec = {**encoder_spec(params, data.meta), "backbone": backbone, "method": kind}
            rank = None
            if kind == "random":
                torch.manual_seed(params.seed)   # the evaluate stage's random encoder
                encoder = build_encoder(spec).to(device)
                found = knn_rows(kind, encoder, data.train, data.test, data.fractions, data.meta["num_classes"],
                                 params.evaluate.knn_k, device, init="scratch")
                found += fit_rows(params, kind, ["linear"], lambda seed: encoder, data, device, note)
                rank = effective_rank(extract_features(encoder, data.val.images, device))
            else:
                found = fit_rows(params, kind, ["finetune"], lambda seed: scratch_encoder(spec, seed), data, device,
                                 note, pretrained=False)
            rows += finish_rows(found, backbone, 0.0, rank)
        save_finished(root, kind, fingerprint, rows, run.info.run_id)
    return rows


def failure_status(state) -> str:
    """'failed: <Error>: <first line>' from a failed Prefect task state."""
    err = state.result(raise_on_failure=False)
    if isinstance(err, BaseException):
        text = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    else:
        text = state.message or state.name
    return f"failed: {text[:300]}"
