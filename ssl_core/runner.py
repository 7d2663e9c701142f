"""`ssl-pipeline run`: validate params, run the Prefect pipeline flow, print a short summary.

`--set` overrides are applied to params.yaml for the duration of the run (DVC tracks that file, so
dvc.lock records exactly what produced the outputs) and the original file is restored afterwards.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import yaml

from ssl_core.config import apply_overrides, load_params


@contextlib.contextmanager
def overridden_params(params_file: Path, overrides: list[str]) -> Iterator[None]:
    if not overrides:
        yield
        return
    original = params_file.read_text()
    raw = apply_overrides(yaml.safe_load(original), overrides)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        yield
    finally:
        params_file.write_text(original)


def prefect_defaults() -> None:
    """Quiet, patient Prefect defaults for a local run (a busy 2-core machine starts the
    ephemeral API server slowly; telemetry is off)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def run_pipeline(params_file: str = "params.yaml", overrides: list[str] | None = None) -> int:
    prefect_defaults()
    from flows.pipeline import pipeline
    from ssl_core import tracking

    path = Path(params_file)
    load_params(path, overrides)   # every error surfaces before any work
    if overrides:
        os.environ[tracking.OVERRIDES_ENV] = json.dumps(overrides)
    with overridden_params(path, overrides or []):
        result = pipeline(root=str(path.parent.resolve()), params_file=path.name)
    print_summary(result)
    return 0


def print_summary(result: dict) -> None:
    uri = tracking_uri_display()
    ran = ", ".join(f"{s}: {'ran' if r else 'unchanged'}" for s, r in result["stages"].items())
    reg = result["registered"]
    print("\n== ssl-pipeline: label efficiency (test accuracy, mean (min-max) over seeds) ==")
    print(result["markdown"])
    print(f"\nstages: {ran}")
    print(f"registry: ssl-classifier v{reg['classifier_version']}"
          f"{' (new)' if reg['classifier_new'] else ''}{', set as @champion' if reg['champion_set'] else ''}")
    print("reports: reports/label_efficiency.csv, reports/label_efficiency.png, metrics/evaluate.json")
    print(f"MLflow: {uri} (pipeline run {result['parent_run_id']})")
    print("UI: `make ui` (or `ssl-pipeline ui`), then open http://127.0.0.1:5000")


def tracking_uri_display() -> str:
    from ssl_core.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"{uri} -> {Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri
