"""`ssl-pipeline run`: validate params, run the Prefect pipeline flow, print a short summary.

`--set` overrides apply to this run only: params.yaml is never written. A run whose overrides change
what a stage reads runs its stages in a run workspace of its own, with a generated params file that
DVC records in dvc.lock (ssl_pipeline/versioning/run_workspace.py). Runs in one workspace take turns.
A killed run (even kill -9) leaves no process or RUNNING MLflow run behind (ssl_pipeline/cli/guard.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ssl_pipeline import outputs
from ssl_pipeline.cli.common import flow_logging, prefect_defaults, tracking_uri_display

HELP_ORDER = 20
DESCRIPTION = """\
Train and evaluate on the workspace's data (data/raw: the demo, or what `ssl-pipeline data import`
added), as a Prefect flow whose tasks run the DVC stages:
  prepare   decode and check every image into uint8 caches; val/test splits, label fractions
  pretrain  self-supervised pretraining of the encoder (pretrain.method) on the unlabeled pool
  finetune  linear probe, fine-tuning and the from-scratch baseline at each label fraction
  evaluate  test accuracy of every classifier, plots, metrics/evaluate.json
then registers the encoder and the best classifier in MLflow (ssl-classifier; @champion when the
registry has none) and prints the label-efficiency table. DVC skips every stage whose code, params
and data did not change, so a second run with nothing changed trains nothing.

How long: the demo (MNIST-5k, the params.yaml budget) takes about 6 minutes on a 2-core CPU,
pretraining half of it (README: "What the demo gives"); an unchanged rerun takes seconds.
Your own data takes longer with more images and a larger data.image_size.
"""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sub.add_parser("run", parents=[common], help="run the whole pipeline as a Prefect flow", description=DESCRIPTION,
                   formatter_class=argparse.RawDescriptionHelpFormatter).set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    return run_pipeline(args.params, args.set, debug=args.debug)


def run_pipeline(params_file: str = "params.yaml", overrides: list[str] | None = None, debug: bool = False) -> int:
    from ssl_pipeline.cli.guard import guarded_run
    from ssl_pipeline.config.schema import load_params

    path = Path(params_file)
    load_params(path, overrides)   # every error surfaces before any work
    prefect_defaults()
    with guarded_run(path.parent, "run"):
        from flows.pipeline import pipeline

        flow_logging(debug)
        result = pipeline(root=str(path.parent.resolve()), params_file=path.name, overrides=list(overrides or []))
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
