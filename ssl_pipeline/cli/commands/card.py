"""`ssl-pipeline card [MODEL_URI]`: print a registered version's model card."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

HELP_ORDER = 45


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("card", parents=[common], help="print a registered model version's model card",
                       description="Print the model card of a registered version: data versions, method, label "
                                   "efficiency, drift, lineage, intended use and measured limitations.")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL_URI",
                   help="models:/NAME/VERSION or models:/NAME@ALIAS (default: models:/<tracking.classifier_name>@champion)")
    p.set_defaults(func=cmd_card)


def cmd_card(args) -> int:
    from mlflow.exceptions import MlflowException

    from ssl_pipeline.tracking import runs as tracking
    from ssl_pipeline.tracking.encoders import ModelNotFound

    name = "ssl-classifier"
    if Path(args.params).exists():
        from ssl_pipeline.cli.common import params_of

        name = params_of(args).tracking.classifier_name
    uri = args.model or f"models:/{name}@champion"
    found = re.match(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/]+))$", uri)
    if not found:
        raise ModelNotFound(f"{uri!r} is not a registered model version: use models:/NAME/VERSION or models:/NAME@ALIAS")
    client = tracking.client()
    try:
        mv = (client.get_model_version(found["name"], found["version"]) if found["version"]
              else client.get_model_version_by_alias(found["name"], found["alias"]))
    except MlflowException as err:
        raise ModelNotFound(f"the model {uri} does not exist in the MLflow registry at {tracking.tracking_uri()} "
                            f"({str(err).splitlines()[0][:160]})") from None
    if not (mv.description or "").startswith("# Model card"):
        raise ModelNotFound(f"{found['name']} v{mv.version} has no model card (registered before model cards existed); "
                            "a new `ssl-pipeline run` registers versions that have one")
    print(mv.description, end="" if mv.description.endswith("\n") else "\n")
    return 0
