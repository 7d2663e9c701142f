"""`ssl-pipeline ui`: the MLflow UI (tracking server) and the Prefect UI (API server) together.

Both bind to 127.0.0.1 by default; Ctrl-C (or SIGTERM) stops both; if one dies, the other is
stopped and the command exits non-zero with the dead server's last log lines. `--auth` turns on
MLflow's basic auth with the admin credentials from SSL_PIPELINE_MLFLOW_USER /
SSL_PIPELINE_MLFLOW_PASSWORD (see ssl_core/servers.py, also for Postgres backends).
"""
from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path


class _Stop(Exception):
    """SIGTERM/SIGINT asked us to stop."""


def _raise_stop(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Stop()


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ui", parents=[common], help="start the MLflow and Prefect servers/UIs (Ctrl-C stops both)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind both servers to (default: 127.0.0.1)")
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow port (default 5000; 0 = any free port)")
    p.add_argument("--prefect-port", type=int, default=4200, help="Prefect port (default 4200; 0 = any free port)")
    p.add_argument("--auth", action="store_true",
                   help="MLflow basic auth; admin credentials from SSL_PIPELINE_MLFLOW_USER/SSL_PIPELINE_MLFLOW_PASSWORD")
    p.add_argument("--mlflow-backend", default=None, metavar="URI",
                   help="MLflow backend store (default sqlite:///mlflow.db; e.g. postgresql://user:pw@host/db)")
    p.add_argument("--workers", type=int, default=2, help="MLflow server worker processes (default 2)")
    p.add_argument("--no-prefect", dest="prefect", action="store_false", help="start only the MLflow server")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each server to answer")
    p.set_defaults(func=run_ui)


def run_ui(args) -> int:
    from ssl_pipeline.serving import servers

    root = Path(".").resolve()
    if args.auth:
        servers.auth_credentials()      # fail before starting anything when the password is missing
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {args.host} makes the servers reachable from other machines"
              + ("" if args.auth else "; the Prefect API has no auth and MLflow has none without --auth"), flush=True)
    started: list[servers.Server] = []
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        started.append(servers.start_mlflow(root, args.mlflow_port, args.host, auth=args.auth,
                                            backend_uri=args.mlflow_backend, workers=args.workers))
        if args.prefect:
            started.append(servers.start_prefect(root, args.prefect_port, args.host))
        for server in started:
            server.wait_ready(args.timeout)
        _announce(started, args.auth)
        while True:
            for server in started:
                if not server.alive():
                    raise servers.ServerError(
                        f"the {server.name} server stopped on its own (exit code {server.proc.returncode}); "
                        f"last lines of {server.log_path}:\n{server.tail()}")
            time.sleep(0.5)
    except _Stop:
        print("stopping the servers ...", flush=True)
        return 0
    finally:
        # Ignore further Ctrl-C while shutting down, so a second press cannot orphan a server.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        servers.stop_all(started)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started:
            print("servers stopped", flush=True)


def _announce(started, auth: bool) -> None:
    for server in started:
        extra = " (basic auth on)" if auth and server.name == "MLflow" else ""
        print(f"{server.name:8s} {server.url}{extra}   pid {server.pid}, log {server.log_path}", flush=True)
    mlflow_url = started[0].url
    print(f"clients: export MLFLOW_TRACKING_URI={mlflow_url}", flush=True)
    if auth:
        print("         export MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=... (the admin credentials)",
              flush=True)
    if len(started) > 1:
        print(f"         export PREFECT_API_URL={started[1].url}/api", flush=True)
    print("Ctrl-C stops " + ("both." if len(started) > 1 else "the server."), flush=True)
