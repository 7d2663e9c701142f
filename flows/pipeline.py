"""The pipeline as a Prefect flow: one task per DVC stage, then model registration.

Thin on purpose: every task calls a stage through DVC (so dvc.lock stays the record of what ran)
or a function in ssl_core. Retries come from params.yaml (flow.retries); a retried pretrain resumes
from its last checkpoint. One run per workspace at a time; a run with --set overrides runs its
stages in a run workspace of its own and never writes params.yaml (ssl_pipeline/versioning/run_workspace.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from ssl_pipeline import outputs
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.config.schema import Params, load_params
from ssl_pipeline.versioning.workspace import require_datasets
from ssl_pipeline.tracking.registry import CHAMPION, register_pipeline_models, tag_version, version_by_alias
from ssl_pipeline.stages import STAGE_NAMES
from ssl_pipeline.versioning.repro import repro_stage
from ssl_pipeline.versioning.run_workspace import pipeline_run
from ssl_pipeline.reports.model_card import publish_cards
from ssl_pipeline.reports.summary import label_efficiency_markdown
from ssl_pipeline.retraining.drift import against_champion
from ssl_pipeline.retraining.plan import pretrain_digest as recipe_digest


@task(name="check-data")
def check_data(params: Params, root: Path) -> None:
    require_datasets(root, params.data)


@task(name="stage")
def run_stage(stage: str, root: Path, env: dict[str, str], options: list[str] | None = None) -> bool:
    logger = get_run_logger()
    ran = repro_stage(stage, root, env, on_line=logger.info, options=options)
    logger.info("stage %s: %s", stage, "ran" if ran else "unchanged (skipped by DVC)")
    return ran


def champion_now(params: Params) -> tuple[dict, str] | None:
    """(tags, models:/ENCODER/VERSION) of the champion before this run registers anything; None when none."""
    clf = version_by_alias(params.tracking.classifier_name, CHAMPION)
    enc = version_by_alias(params.tracking.encoder_name, CHAMPION)
    return None if clf is None or enc is None else (dict(clf.tags), f"models:/{params.tracking.encoder_name}/{enc.version}")


@task(name="register-models")
def register_models(params: Params, root: Path, digest: str, predecessor: tuple[dict, str] | None) -> dict:
    """Register both models; measure the drift of the data against the predecessor champion (when there was
    one and the caller did not measure it already); then publish their model card."""
    registered = register_pipeline_models(params, root, pretrain_digest=digest)
    if predecessor is not None and registered["classifier_new"]:
        report = against_champion(params, root, predecessor[0], predecessor[1])
        tag_version(params.tracking.classifier_name, registered["classifier_version"], report.tags())
        get_run_logger().info("drift vs the champion before this run: %s", report.reason)
    publish_cards(params, root, registered["classifier_version"], registered["encoder_version"])
    if registered["champion_reason"]:
        get_run_logger().warning("champion: v%s (%s)", registered["classifier_version"], registered["champion_reason"])
    return registered


@task(name="publish-report")
def publish_report(root: Path) -> str:
    table = pd.read_csv(root / outputs.TABLE_CSV)
    markdown = label_efficiency_markdown(table)
    create_markdown_artifact(markdown=markdown, key="label-efficiency", description="Test accuracy by label fraction")
    create_table_artifact(table=table.round(4).to_dict(orient="records"), key="label-efficiency-table")
    return markdown


@flow(name="ssl-pipeline", log_prints=True)
def pipeline(root: str = ".", params_file: str = "params.yaml", overrides: list[str] | None = None,
             pretrain_digest: str = "", measure_drift: bool = True) -> dict:
    """overrides: `--set` style KEY=VALUE for this run only (params.yaml is never written).
    pretrain_digest: what the registered versions record as their pretraining recipe (retrain passes
    the one of its params before a warm start's overrides; default: these params').
    measure_drift: measure a new version's data against the champion before it (retrain measures it itself)."""
    root_path = Path(root).resolve()
    overrides = list(overrides or [])
    params = load_params(root_path / params_file, overrides)
    check_data(params, root_path)
    tracking.setup(params.tracking.experiment, root_path)
    predecessor = champion_now(params) if measure_drift else None
    flow_run_id = str(flow_run.get_id() or "")
    with pipeline_run(root_path, params_file, overrides) as run:
        tags = {**tracking.run_tags("pipeline", root_path, overrides), "prefect_flow_run_id": flow_run_id}
        with mlflow.start_run(run_name="pipeline", tags=tags) as parent:
            tracking.log_params(params)
            mlflow.log_text(run.params_text, "params.yaml")   # exactly what the stages read
            env = {tracking.PARENT_ENV: parent.info.run_id, tracking.FLOW_RUN_ENV: flow_run_id,
                   tracking.OVERRIDES_ENV: json.dumps(overrides) if overrides else "",
                   "MLFLOW_TRACKING_URI": tracking.absolute_tracking_uri()}
            ran = {}
            for stage in STAGE_NAMES:
                task_ = run_stage.with_options(name=f"stage-{stage}", retries=params.flow.retries,
                                               retry_delay_seconds=params.flow.retry_delay_seconds)
                ran[stage] = task_(stage, run.dvc_root, env, run.repro_options(stage))
            registered = register_models(params, run.dvc_root, pretrain_digest or recipe_digest(params), predecessor)
            markdown = publish_report(run.dvc_root)
            mlflow.set_tags({f"stage.{s}": ("ran" if r else "unchanged") for s, r in ran.items()})
            mlflow.log_text(markdown, "reports/label_efficiency.md")
    return {"stages": ran, "registered": registered, "parent_run_id": parent.info.run_id, "markdown": markdown}


if __name__ == "__main__":
    print(pipeline()["markdown"])
