"""Finished results of an interrupted comparison: each method's (or baseline's) rows are kept in
checkpoints/compare/<name>/result.json, fingerprinted on what they depend on, until the report is
published; a rerun with the same params and data reuses them instead of training again."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import mlflow

from ssl_core.fsutil import atomic_write_bytes
from ssl_pipeline.config.schema import Params
from ssl_pipeline.ingest.weights import InitSource
from ssl_pipeline.outputs import COMPARE_CHECKPOINT_DIR
from ssl_pipeline.recipes import checkpoint_fingerprint

RESULT_NAME = "result.json"


def result_fingerprint(params: Params, root: Path, meta: dict, name: str, backbones: list[str] = (),
                       init: InitSource | None = None) -> str:
    """What a method's (or baseline's) rows depend on: the training params, data and starting weights
    (as for its checkpoint), the evaluation settings, and for a baseline its architectures."""
    body = json.dumps({"name": name, "training": checkpoint_fingerprint(params, root, meta, init and init.sha256),
                       "backbones": list(backbones),
                       "finetune": params.finetune.model_dump(mode="json"),
                       "evaluate": params.evaluate.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _result_path(root: Path, name: str) -> Path:
    return root / COMPARE_CHECKPOINT_DIR / name / RESULT_NAME


def save_finished(root: Path, name: str, fingerprint: str, rows: list[dict], run_id: str) -> None:
    body = json.dumps({"fingerprint": fingerprint, "run_id": run_id, "rows": rows})
    atomic_write_bytes(body.encode(), _result_path(root, name))


def load_finished(root: Path, name: str, fingerprint: str) -> dict | None:
    """The saved {fingerprint, run_id, rows} of `name` when it matches `fingerprint`, else None."""
    try:
        saved = json.loads(_result_path(root, name).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint else None


def reuse_finished(name: str, finished: dict, note: Callable[[str], None]) -> list[dict]:
    """Log a finished result into the active child run (tagged with the run that measured it)."""
    note(f"compare {name}: finished by run {finished['run_id']} of an interrupted comparison "
         "with the same params and data; its results are reused")
    mlflow.set_tag("compare.reused_from_run_id", finished["run_id"])
    rows = finished["rows"]
    if rows and rows[0]["pretrain_seconds"]:   # a method's rows share them; a baseline has none
        mlflow.log_metrics({"pretrain_seconds": rows[0]["pretrain_seconds"], "feature_rank": rows[0]["feature_rank"]})
    log_rows(rows)
    return rows


def log_rows(rows: list[dict]) -> None:
    """Each row's test accuracy as a metric of the active (child) run."""
    for r in rows:
        mlflow.log_metric(f"test_accuracy.{r['backbone']}.{r['protocol']}.{r['label_fraction']:g}.{r['seed']}",
                          r["accuracy"])


def clear_finished(root: Path) -> None:
    """Called once the comparison's report is published: the next comparison measures afresh."""
    for path in (root / COMPARE_CHECKPOINT_DIR).glob(f"*/{RESULT_NAME}"):
        path.unlink(missing_ok=True)
