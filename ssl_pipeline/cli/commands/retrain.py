"""`ssl-pipeline retrain` (one retrain now) and `ssl-pipeline serve` (retrain on the cron schedule).

serve needs a real Prefect API: its scheduler service is what creates the scheduled runs, and the
ephemeral in-process API runs no scheduler. With PREFECT_API_URL set, serve uses that server;
otherwise it reuses a Prefect server answering on 127.0.0.1:--port, or starts one there itself
(stopped again on Ctrl-C), so scheduled retraining is one command.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

SERVER_START_TIMEOUT_S = 180   # a busy 2-core machine takes a while to migrate and start


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("retrain", parents=[common],
                       help="retrain now: refresh data; if data or params changed, train and promote the "
                            "challenger if better by retrain.margin")
    p.add_argument("--margin", type=float, metavar="M", help="same as --set retrain.margin=M")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for a retrain already running on this workspace "
                        "(default 0: refuse at once; -1: wait as long as it takes)")
    p.set_defaults(func=cmd_retrain)
    s = sub.add_parser("serve", parents=[common],
                       help="run the retrain flow on its cron schedule (retrain.cron) from this process until Ctrl-C")
    s.add_argument("--port", type=int, default=4200,
                   help="without PREFECT_API_URL: Prefect server port on 127.0.0.1 to use or start (default 4200)")
    s.set_defaults(func=cmd_serve)


def _overrides(args) -> list[str]:
    return list(args.set) + ([f"retrain.margin={args.margin}"] if getattr(args, "margin", None) is not None else [])


def cmd_retrain(args) -> int:
    from ssl_pipeline.cli.common import flow_logging, prefect_defaults
    from ssl_pipeline.cli.guard import guarded_run
    from ssl_pipeline.config.schema import load_params

    prefect_defaults()
    overrides = _overrides(args)
    path = Path(args.params)
    load_params(path, overrides)   # every params error before Prefect starts
    with guarded_run(path.parent, "retrain"):
        from flows.retrain import retrain

        flow_logging(args.debug)
        result = retrain(root=str(path.parent.resolve()), params_file=path.name, overrides=overrides,
                         wait=None if args.wait < 0 else args.wait)
    print(result["markdown"])
    print(f"\ndecision: {result['decision']}; champion: v{result['new_champion']}; "
          f"MLflow retrain run {result['retrain_run_id']}")
    return 0


def cmd_serve(args) -> int:
    from ssl_pipeline.config.schema import load_params
    from ssl_pipeline.cli.common import prefect_defaults

    prefect_defaults()
    path = Path(args.params)
    params = load_params(path, args.set)
    r = params.retrain
    with _prefect_api(args.port) as api_url:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.retrain import serve

        print(f"Prefect API: {api_url}")
        ready = (f"serving deployment retrain/{r.deployment_name}: cron {r.cron!r} ({r.timezone}), "
                 f"workspace {path.parent.resolve()}; Ctrl-C stops")
        with temporary_settings({PREFECT_API_URL: api_url}):   # prefect may have read its settings already
            serve(params, path.parent.resolve(), path.name, args.set, on_ready=lambda: print(ready, flush=True))
    return 0


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def _prefect_api(port: int) -> Iterator[str]:
    """PREFECT_API_URL when set; else a Prefect server on 127.0.0.1:port (started here if none answers)."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    api_url = f"http://127.0.0.1:{port}/api"
    if _healthy(api_url):
        os.environ["PREFECT_API_URL"] = api_url
        yield api_url
        return
    print(f"starting a Prefect server on 127.0.0.1:{port} (stopped with this command) ...", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _healthy(api_url):
            if server.poll() is not None:
                raise RuntimeError(f"the Prefect server exited (code {server.returncode}) before answering on "
                                   f"port {port}; is the port taken? pass --port or set PREFECT_API_URL")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not answer on {api_url} within {SERVER_START_TIMEOUT_S} s")
            time.sleep(1)
        os.environ["PREFECT_API_URL"] = api_url
        yield api_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
