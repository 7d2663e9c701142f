"""Nothing outlives a long CLI run (`run`, `compare`, `retrain`) that is killed, even with kill -9.

Such a run starts processes that do not die with it: Prefect's temporary API server, `dvc repro`,
the stage process under it, torchrun and its ranks. SIGKILL gives the run no chance to stop them, to
end its MLflow runs (they would stay RUNNING) or to say anything. So:
- the run gets a token, exported as SSL_PIPELINE_RUN_TOKEN: every process it starts inherits it
  (and its MLflow runs are tagged with it, see tracking/runs.py);
- a watchdog process (this module, `python -m ssl_pipeline.cli.guard RECORD`, in its own session so
  a kill of the run's process group spares it) holds the read end of a pipe whose write end only the
  run holds. The run writes "done" when it ends in any ordinary way (success, error, Ctrl-C,
  SIGTERM). End of file without "done" means the run was killed: the watchdog stops every process
  carrying the token (SIGTERM, then SIGKILL), and marks the token's MLflow runs still RUNNING as KILLED;
- the run leaves a record (pid, start time, token) in .dvc/tmp/ssl-pipeline-runs/ while it runs. A
  run that finds the record of a dead run (the watchdog was killed too, or the machine rebooted)
  does the same clean-up before it starts.
Linux /proc is used to find the processes; elsewhere only the MLflow clean-up runs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

from ssl_pipeline.tracking.runs import RUN_TOKEN_ENV, RUN_TOKEN_TAG, absolute_tracking_uri

RECORDS_DIR = Path(".dvc/tmp/ssl-pipeline-runs")
GRACE_S = 10.0   # between SIGTERM and SIGKILL for what a killed run left


@contextlib.contextmanager
def guarded_run(root: Path, command: str) -> Iterator[str]:
    """Run the block as one guarded run of `command` in workspace `root`; yields the token."""
    records = records_dir(Path(root))
    records.mkdir(parents=True, exist_ok=True)
    for stale in sorted(records.glob("*.json")):
        _reap_if_dead(stale)
    token = uuid.uuid4().hex
    record = records / f"{token}.json"
    record.write_text(json.dumps({"token": token, "pid": os.getpid(), "start": _start_time(os.getpid()),
                                  "command": command, "tracking_uri": absolute_tracking_uri()}))
    env = {k: v for k, v in os.environ.items() if k != RUN_TOKEN_ENV}
    watchdog = subprocess.Popen([sys.executable, "-m", "ssl_pipeline.cli.guard", str(record)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, env=env, start_new_session=True)
    os.environ[RUN_TOKEN_ENV] = token
    try:
        yield token
    finally:
        os.environ.pop(RUN_TOKEN_ENV, None)
        with contextlib.suppress(OSError):
            watchdog.stdin.write(b"done\n")
            watchdog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=10)
        record.unlink(missing_ok=True)


def records_dir(root: Path) -> Path:
    """Inside the workspace's DVC folder (kept across reboots, ignored by git); without one, /tmp."""
    root = root.resolve()
    if (root / ".dvc").is_dir():
        return root / RECORDS_DIR
    return Path(tempfile.gettempdir()) / f"ssl-pipeline-runs-{hashlib.sha1(str(root).encode()).hexdigest()[:16]}"


def reap(record: dict) -> tuple[int, int]:
    """Stop the processes carrying the record's token and mark its RUNNING MLflow runs KILLED;
    returns (processes stopped, runs marked)."""
    token = record["token"]
    stopped = _stop_processes(token)
    return stopped, _mark_runs_killed(token, record.get("tracking_uri", ""))


def _carrying(token: str) -> list[int]:
    """Live processes (not zombies) whose environment holds the token; not this one."""
    found, wanted = [], f"{RUN_TOKEN_ENV}={token}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0") and not _zombie(entry):
                found.append(pid)
        except OSError:   # gone, or another user's
            continue
    return found


def _zombie(entry: Path) -> bool:
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _stop_processes(token: str) -> int:
    pids = _carrying(token)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while _carrying(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _carrying(token):   # what did not stop on SIGTERM, and anything started meanwhile
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def _mark_runs_killed(token: str, uri: str) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(uri or None)
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, f"tags.`{RUN_TOKEN_TAG}` = '{token}' and attributes.status = 'RUNNING'",
                                  max_results=1000) if experiments else []
        for run in runs:
            client.set_terminated(run.info.run_id, status="KILLED")
        return len(runs)
    except (MlflowException, OSError) as err:   # tracking unreachable: the runs stay; say so
        print(f"ssl-pipeline: could not mark the killed run's MLflow runs at {uri}: {err}", file=sys.stderr)
        return 0


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _reap_if_dead(path: Path) -> None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return
    if record.get("start") and _start_time(int(record["pid"])) == record["start"]:
        return   # still running (a concurrent run in this workspace)
    stopped, marked = reap(record)
    if stopped or marked:
        print(f"ssl-pipeline: a killed `ssl-pipeline {record.get('command')}` (pid {record.get('pid')}) had left "
              f"{stopped} process(es) and {marked} MLflow run(s) RUNNING: stopped and marked KILLED", file=sys.stderr)
    path.unlink(missing_ok=True)


def main(record_path: str) -> int:
    """The watchdog: wait for the run to end; if it died without saying so, clean up after it."""
    told = sys.stdin.buffer.read()   # returns at end of file: the run ended or was killed
    if b"done" in told:
        return 0
    path = Path(record_path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    stopped, marked = reap(record)
    with contextlib.suppress(OSError):
        print(f"ssl-pipeline: the run (pid {record['pid']}) was killed: stopped {stopped} process(es) it left and "
              f"marked {marked} MLflow run(s) KILLED", file=sys.stderr, flush=True)
    path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a Ctrl-C meant for the run must not stop its watchdog
    sys.exit(main(sys.argv[1]))
