"""What several commands share: loading params with --set, Prefect's local defaults, where MLflow is."""
from __future__ import annotations

import os
from pathlib import Path


def params_of(args):
    """params.yaml (--params) with the --set overrides, validated before any work (imported here:
    the schema pulls in torch, which `--help` does not need)."""
    from ssl_pipeline.config.schema import load_params

    return load_params(args.params, args.set)


def prefect_defaults() -> None:
    """Quiet, patient Prefect defaults for a local run (a busy 2-core machine starts the
    ephemeral API server slowly; telemetry is off)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def tracking_uri_display() -> str:
    from ssl_pipeline.tracking.runs import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"{uri} -> {Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def flow_logging(debug: bool) -> None:
    """Prefect's terminal output without tracebacks unless --debug: a failed flow ends with the CLI's
    one `error:` line (Prefect's API and UI keep the full logs). Call after importing a flow."""
    if not debug:
        from ssl_pipeline.progress import hide_library_tracebacks

        hide_library_tracebacks("prefect")
