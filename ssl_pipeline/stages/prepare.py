"""prepare: decode + validate raw image folders into uint8 caches, a manifest and seeded splits.

Outputs (data/prepared/): unlabeled.pt, train.pt, val.pt, test.pt, meta.json, fractions.json,
manifest.csv; reports/quarantine.csv (every rejected or converted file, with the reason).
"""
from __future__ import annotations

import json
from pathlib import Path

from ssl_pipeline import outputs
from ssl_pipeline.config.schema import Params
from ssl_pipeline.ingest.prepare import prepare
from ssl_pipeline.progress import log
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.tracking.datasets import dataset_infos
from ssl_pipeline.versioning.workspace import require_data


def run(params: Params, root: Path = Path(".")) -> dict:
    d = params.data
    require_data(root, [f"{d.raw_dir}/labeled"])
    with tracking.stage_run("prepare", params, dataset_infos(root, d.raw_dir), root):
        summary = prepare(params, root)
        tracking.mlflow.log_metrics({k: float(v) for k, v in summary["counts"].items()})
        tracking.mlflow.log_artifact(str(root / outputs.QUARANTINE_CSV), artifact_path="reports")
    log.info("prepare: %s", json.dumps(summary["counts"]))
    return summary
