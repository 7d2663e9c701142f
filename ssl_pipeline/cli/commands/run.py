"""`ssl-pipeline run`: validate params, run the Prefect pipeline flow, print a short summary.

`--set` overrides are applied to params.yaml for the duration of the run (DVC tracks that file, so
dvc.lock records exactly what produced the outputs) and the original file is restored afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ssl_pipeline import outputs
from ssl_pipeline.cli.common import prefect_defaults, tracking_uri_display

HELP_ORDER = 20


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sub.add_parser("run", parents=[common], help="run the whole pipeline as a Prefect flow").set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    return run_pipeline(args.params, args.set)


def run_pipeline(params_file: str = "params.yaml", overrides: list[str] | None = None) -> int:
    prefect_defaults()
    from flows.pipeline import pipeline
    from ssl_pipeline.config.overrides import overridden_params
    from ssl_pipeline.config.schema import load_params
    from ssl_pipeline.tracking import runs as tracking

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
    if reg.get("champion_reason"):
        print(f"champion: v{reg['classifier_version']}, because {reg['champion_reason']}")
    print(f"model card: `ssl-pipeline card models:/ssl-classifier/{reg['classifier_version']}`")
    print(f"reports: {outputs.TABLE_CSV}, {outputs.PLOT_PNG}, {outputs.EVALUATE_METRICS_JSON}")
    print(f"MLflow: {uri} (pipeline run {result['parent_run_id']})")
    print("UI: `make ui` (or `ssl-pipeline ui`), then open http://127.0.0.1:5000")
