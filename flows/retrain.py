"""Scheduled retraining as a Prefect flow: refresh data -> (nothing changed? stop) -> pipeline ->
challenger vs champion on the same test split -> promote only by a margin. Logic: ssl_pipeline/retraining/decision.py.

Deploy it with `ssl-pipeline serve` (this process runs the schedule) or `prefect deploy` (prefect.yaml,
a work pool runs it). Two retrains never overlap on a workspace: an fcntl lock on the workspace plus the
Prefect tag concurrency limit params.retrain.concurrency_tag (limit 1), held for the whole run.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.pipeline import pipeline
from ssl_pipeline.tracking import registry
from ssl_pipeline.retraining import decision, plan
from ssl_pipeline.retraining.drift import DriftReport
from ssl_pipeline.reports.model_card import publish_cards
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.config.schema import Params, load_params

ARTIFACT_KEY = "retrain-decision"
MIN_SLOT_WAIT_S = 5.0   # the workspace lock is ours by then: a slot still held means another workspace


def ensure_concurrency_limit(tag: str, limit: int = 1) -> None:
    """Create (or reset to `limit`) the Prefect tag concurrency limit on `tag`; idempotent (upsert)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=limit)


@contextlib.contextmanager
def prefect_slot(tag: str, wait: float | None) -> Iterator[None]:
    """Hold the tag limit's slot for the whole retrain. Prefect keeps a tag limit as the global limit
    `tag:<tag>`; taking it here, not on each task, makes the whole run the unit (and no task of this
    flow carries the tag, so none waits on its own flow's slot)."""
    from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError
    from prefect.concurrency.sync import concurrency

    ensure_concurrency_limit(tag)
    timeout = None if wait is None else max(wait, MIN_SLOT_WAIT_S)
    with contextlib.ExitStack() as stack:
        try:   # only the acquisition: a TimeoutError from the retrain itself must stay what it is
            stack.enter_context(concurrency(f"tag:{tag}", occupy=1, timeout_seconds=timeout, lease_duration=300))
        except AcquireConcurrencySlotTimeoutError as err:
            raise decision.RetrainBusy(f"another retrain holds the Prefect concurrency slot {tag!r} (limit 1); "
                                    "not starting a second one") from err
        yield


@task(name="refresh-data")
def refresh_data(params: Params, root: Path) -> dict:
    logger = get_run_logger()
    actions = decision.refresh_data(root, params.data.raw_dir, note=logger.info)
    return {**actions, "md5s": registry.data_tags(root)}


@task(name="plan-pretraining")
def plan_pretraining(params: Params, root: Path, champion_tags: dict | None) -> tuple[plan.Plan, DriftReport | None]:
    """Drift of the new images against the champion's pool, then cold / warm start / reuse of its encoder."""
    encoder = registry.version_by_alias(params.tracking.encoder_name, registry.CHAMPION)
    uri = f"models:/{params.tracking.encoder_name}/{encoder.version}" if encoder is not None else ""
    chosen, drift = plan.plan_retraining(params, root, champion_tags, uri)
    logger = get_run_logger()
    if drift is not None:
        logger.info("drift: %s", drift.reason)
    logger.info("encoder: %s (%s)", chosen.mode, chosen.reason)
    return chosen, drift


@task(name="champion-vs-challenger")
def champion_vs_challenger(params: Params, root: Path, registered: dict, champion_before: dict | None,
                           state: dict[str, str]) -> decision.Outcome:
    out = decision.compare(params, root, registered, champion_before, state)
    get_run_logger().info("champion v%s: %s, challenger v%s: %s -> %s", out.champion_version,
                          out.champion_accuracy, out.challenger_version, out.challenger_accuracy, out.decision)
    return out


@task(name="record-decision")
def record_decision(params: Params, root: Path, out: decision.Outcome) -> tuple[str, str]:
    """MLflow retrain run, tags on both model versions, Prefect artifact; returns (markdown, run id)."""
    text = decision.markdown(out)
    out.retrain_run_id = decision.log_run(params, root, out, text, str(flow_run.get_id() or ""))
    decision.record_on_versions(params, out)
    if out.decision != decision.NOTHING and out.challenger_version is not None:   # the card says how it was decided
        clf = registry.tracking.client().get_model_version(params.tracking.classifier_name, str(out.challenger_version))
        publish_cards(params, root, out.challenger_version, int(clf.tags.get("encoder_version", out.challenger_version)))
    create_markdown_artifact(markdown=text, key=ARTIFACT_KEY, description=f"Retrain: {out.decision}")
    return text, out.retrain_run_id


@flow(name="retrain", log_prints=True)
def retrain(root: str = ".", params_file: str = "params.yaml", overrides: list[str] | None = None,
            wait: float | None = 0.0) -> dict:
    """Retrain if the data or params changed since the champion was decided; promote by margin.

    overrides: `--set` style KEY=VALUE for this run only (params.yaml is never written; the pipeline
    runs them in a run workspace and adopts its results before the champion and challenger are scored).
    wait: seconds to wait for a retrain already running on this workspace (0: fail at once, None: forever).
    """
    root_path = Path(root).resolve()
    path = root_path / params_file
    params = load_params(path, overrides)   # every params error before any lock or work
    logger = get_run_logger()
    with decision.retrain_lock(root_path, wait), prefect_slot(params.retrain.concurrency_tag, wait):
        if overrides:
            os.environ[tracking.OVERRIDES_ENV] = json.dumps(overrides)
        tracking.setup(params.tracking.experiment, root_path)
        refresh_data(params, root_path)
        state = decision.current_state(params, root_path)
        champion = registry.version_by_alias(params.tracking.classifier_name, registry.CHAMPION)
        if champion is not None and decision.recorded_state(champion.tags) == state:
            logger.info("nothing changed since champion v%s was decided: not training", champion.version)
            out = decision.Outcome(decision=decision.NOTHING, margin=params.retrain.margin, state=state,
                                champion_version=int(champion.version),
                                champion_data=decision.training_data(champion.tags))
        else:
            before = None if champion is None else {"version": int(champion.version), "tags": dict(champion.tags)}
            chosen, drift = plan_pretraining(params, root_path, before and before["tags"])
            # warm start / reuse: overrides of this pipeline run only (params.yaml is never written)
            result = pipeline(root=str(root_path), params_file=params_file,
                              overrides=[*(overrides or []), *chosen.overrides],
                              pretrain_digest=plan.pretrain_digest(params), measure_drift=False)
            out = champion_vs_challenger(params, root_path, result["registered"], before, state)
            out.pipeline_run_id = result["parent_run_id"]
            out.plan = chosen.as_dict()
            if drift is not None:
                out.drift, out.drift_tags = drift.as_dict(), drift.tags()
        text, out.retrain_run_id = record_decision(params, root_path, out)
    return {**out.as_dict(), "markdown": text}


def build_deployment(params: Params, root: Path, params_file: str = "params.yaml", overrides: list[str] | None = None):
    """The retrain deployment: cron schedule + timezone from params, one run at a time."""
    from prefect.flows import EntrypointType
    from prefect.schedules import Cron

    r = params.retrain
    return retrain.to_deployment(
        name=r.deployment_name,
        schedules=[Cron(r.cron, timezone=r.timezone)],
        parameters={"root": str(Path(root).resolve()), "params_file": params_file, "overrides": overrides or []},
        tags=[r.concurrency_tag],
        concurrency_limit=1,   # a late run queues behind the one still running
        description=f"Scheduled retraining of {Path(root).resolve()}: champion/challenger by margin {r.margin:g}",
        entrypoint_type=EntrypointType.MODULE_PATH,   # `flows.retrain.retrain`: works from any directory
    )


def apply_deployment(params: Params, root: Path, params_file: str = "params.yaml",
                     overrides: list[str] | None = None):
    """Register (create or update) the deployment with the Prefect API without serving it; returns its id."""
    ensure_concurrency_limit(params.retrain.concurrency_tag)
    return build_deployment(params, root, params_file, overrides).apply()


SERVE_GRACE_S = 20.0   # after Ctrl-C, Prefect's own shutdown gets this long before the exit is forced


def pause_deployment(params: Params) -> None:
    """Pause the served deployment (if registered), so no scheduled runs pile up while nobody serves them."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):   # never registered
        client.pause_deployment(client.read_deployment_by_name(f"retrain/{params.retrain.deployment_name}").id)


def serve(params: Params, root: Path, params_file: str = "params.yaml", overrides: list[str] | None = None,
          on_ready: Callable[[], None] = lambda: None) -> None:
    """Register the deployment and run its schedule in this process until Ctrl-C (Prefect's `serve`).
    `on_ready` runs once Ctrl-C is guarded: a caller that says "Ctrl-C stops" says it through it."""
    from prefect import serve as prefect_serve

    from ssl_pipeline.interrupt import install_interrupt_guard

    install_interrupt_guard(SERVE_GRACE_S, on_force=lambda: pause_deployment(params))
    ensure_concurrency_limit(params.retrain.concurrency_tag)
    on_ready()
    try:
        prefect_serve(build_deployment(params, root, params_file, overrides))
    finally:
        # Prefect pauses a served deployment on shutdown only when its runner got far enough
        pause_deployment(params)
        print(f"stopped serving retrain/{params.retrain.deployment_name} (deployment paused)", flush=True)


if __name__ == "__main__":
    print(retrain()["markdown"])
