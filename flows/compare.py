"""The method comparison as a Prefect flow: prepare (through DVC) -> one task per method -> the
random and scratch baselines -> report (CSV, plot, MLflow, Prefect artifacts). The report is rewritten
after every method, and a rerun of an interrupted comparison reuses the methods it finished.

Thin on purpose: the work is in ssl_pipeline/comparison/. Every method is
its own task with retries from params.flow (a retried method resumes from its checkpoint); a method
that still fails is reported as failed and the others finish.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from ssl_pipeline.comparison import methods as comparison
from ssl_pipeline.comparison import report, results
from ssl_pipeline.config.schema import Params, load_params
from ssl_core.data.cache import load_meta
from ssl_pipeline.versioning.workspace import require_datasets
from ssl_pipeline.versioning.repro import repro_stage
from ssl_pipeline.versioning.run_workspace import discard, pipeline_run

ARTIFACT_KEY = "method-comparison"


@task(name="check-data")
def check_data(params: Params, root: Path) -> None:
    require_datasets(root, params.data)


@task(name="stage-prepare")
def prepare(root: Path, env: dict[str, str], options: list[str] | None = None) -> bool:
    return repro_stage("prepare", root, env, on_line=get_run_logger().info, options=options)


@task(name="compare-method")
def compare_method(params: Params, root: Path, method: str) -> list[dict]:
    return comparison.run_method(params, root, method, note=get_run_logger().info)


@task(name="compare-baseline")
def compare_baseline(params: Params, root: Path, kind: str, backbones: list[str]) -> list[dict]:
    return comparison.run_baseline(params, root, kind, backbones, note=get_run_logger().info)


@task(name="publish-report")
def publish_report(params: Params, rows: list[dict], order: list[str], out_dir: Path, parent_run_id: str) -> dict:
    title = (f"SSL methods on the same data, pretraining {comparison.budget_text(params)} "
             f"(test accuracy, band = min-max over seeds)")
    result = report.write(rows, order, out_dir, title)
    report.log_to_run(parent_run_id, result)
    create_markdown_artifact(markdown=result["markdown"], key=ARTIFACT_KEY, description="Method comparison")
    table = result["table"].round(4)
    table = table.astype(object).where(table.notna(), None)   # JSON null, not NaN, on status rows
    create_table_artifact(table=table.to_dict(orient="records"), key=f"{ARTIFACT_KEY}-table",
                          description="Test accuracy per method, protocol, label fraction and seed")
    return result


@flow(name="compare", log_prints=True)
def compare(root: str = ".", params_file: str = "params.yaml", overrides: list[str] | None = None,
            out_dir: str = "reports") -> dict:
    """overrides: `--set` style KEY=VALUE for this comparison only (params.yaml is never written). When
    they change the data, `prepare` runs in a run workspace whose data the methods train on; the
    report goes to the workspace's `out_dir`."""
    root_path = Path(root).resolve()
    params = load_params(root_path / params_file, overrides)   # every params error before any work
    logger = get_run_logger()
    retry = {"retries": params.flow.retries, "retry_delay_seconds": params.flow.retry_delay_seconds}
    check_data(params, root_path)
    with pipeline_run(root_path, params_file, list(overrides or []), "comparison", finish=discard) as run, \
            comparison.parent_run(params, root_path, overrides, str(flow_run.get_id() or "")) as parent_run_id:
        prepare.with_options(**retry)(run.dvc_root, comparison.child_env(), run.repro_options("prepare"))
        work = run.dvc_root   # the prepared data, the checkpoints and finished results of this comparison
        entries = comparison.plan(params, load_meta(work / params.data.prepared_dir))
        order = [e.method for e in entries] + list(comparison.baselines(params))
        rows: list[dict] = []
        for entry in entries:
            if entry.skip_reason:
                logger.warning("%s: %s", entry.method, entry.skip_reason)
                rows.append(comparison.status_row(entry.method, entry.backbone, entry.skip_reason))
                continue
            task_ = compare_method.with_options(name=f"compare-{entry.method}", **retry)
            rows += _rows_or_failure(task_(params, work, entry.method, return_state=True),
                                     entry.method, entry.backbone, logger)
            _write_partial(params, rows, order, root_path / out_dir)
        backbones = comparison.baseline_backbones(params, entries)
        for kind in comparison.baselines(params):
            task_ = compare_baseline.with_options(name=f"compare-{kind}", **retry)
            rows += _rows_or_failure(task_(params, work, kind, backbones, return_state=True),
                                     kind, ",".join(backbones), logger)
        result = publish_report(params, rows, order, root_path / out_dir, parent_run_id)
        results.clear_finished(work)   # the report holds them now: a rerun measures afresh
    return {"parent_run_id": parent_run_id, "markdown": result["markdown"], "csv": str(result["csv"]),
            "png": str(result["png"]), "failed": sorted({r["method"] for r in rows if r["status"].startswith("failed")}),
            "skipped": [e.method for e in entries if e.skip_reason]}


def _write_partial(params: Params, rows: list[dict], order: list[str], out_dir: Path) -> None:
    """The report so far, after every method: a long comparison shows its results as they come, and
    one that is interrupted leaves them behind (its rerun reuses the finished methods)."""
    done = len({r["method"] for r in rows})
    report.write(rows, order, out_dir, f"Method comparison so far ({done} of {len(order)}), pretraining "
                                       f"{comparison.budget_text(params)}")


def _rows_or_failure(state, method: str, backbone: str, logger) -> list[dict]:
    if state.is_completed():
        return state.result()
    status = comparison.failure_status(state)
    logger.error("%s: %s (the other methods go on)", method, status)
    return [comparison.status_row(method, backbone, status)]


if __name__ == "__main__":
    print(compare()["markdown"])
