"""prepare: decode + validate raw image folders into uint8 caches, a manifest and seeded splits.

Outputs (data/prepared/): store/ (the sharded uint8 cache), <split>.rows.npy / .labels.npy, meta.json,
fractions.json, manifest.csv; reports/quarantine.csv (every rejected or converted file, with the reason).
The per-channel ranges of deep sources go into meta.json and the MLflow run (tag data.channel_ranges).
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
        try:
            summary = prepare(params, root)
        finally:   # the quarantine report explains a failure too
            if (root / outputs.QUARANTINE_CSV).exists():
                tracking.mlflow.log_artifact(str(root / outputs.QUARANTINE_CSV), artifact_path="reports")
        tracking.mlflow.log_metrics({k: float(v) for k, v in summary["counts"].items()})
        meta = root / d.prepared_dir / "meta.json"
        tracking.mlflow.log_artifact(str(meta), artifact_path="prepared")
        ranges = summary["channel_ranges"]
        if ranges:   # how deep (16-bit, float) sources were scaled to 8 bits, per channel
            tracking.mlflow.set_tag("data.channel_ranges", json.dumps([[round(a, 6), round(b, 6)] for a, b in ranges]))
    log.info("prepare: %s", json.dumps(summary["counts"]))
    return summary
