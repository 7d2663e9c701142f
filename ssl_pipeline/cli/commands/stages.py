"""`ssl-pipeline prepare|pretrain|finetune|evaluate` (and `stage NAME`): one stage, in this process.
This is what dvc.yaml runs; `ssl-pipeline run` runs them all through DVC and Prefect."""
from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path

from ssl_pipeline.cli.common import params_of
from ssl_pipeline.stages import STAGE_NAMES, STAGES
from ssl_pipeline.versioning.run_workspace import stage_lock

HELP_ORDER = 10


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    for name in STAGE_NAMES:
        sub.add_parser(name, parents=[common], help=f"stage: {STAGES[name]}").set_defaults(func=cmd_stage)
    stage = sub.add_parser("stage", parents=[common], help="run one stage by name (what dvc.yaml calls)")
    stage.add_argument("stage_name", choices=STAGE_NAMES)
    stage.set_defaults(func=cmd_stage)


def cmd_stage(args) -> int:
    from ssl_pipeline.tracking import runs as tracking

    params = params_of(args)
    if args.set:
        os.environ[tracking.OVERRIDES_ENV] = json.dumps(args.set)
    name = getattr(args, "stage_name", None) or args.command
    with stage_lock(Path("."), name):
        importlib.import_module(f"ssl_pipeline.stages.{name}").run(params, Path("."))
    return 0
