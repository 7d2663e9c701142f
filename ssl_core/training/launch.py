"""torchrun launcher: run a per-rank entry point in several processes, turn a failed rank into one error.

The pretrain stage uses it when `pretrain.nproc_per_node * pretrain.nnodes > 1`:

    python -m torch.distributed.run --nproc-per-node N --nnodes M --max-restarts 0 --log-dir TMP
        (--standalone | --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID)
        -m ssl_core.recipes.distributed --root ... --params ... --out ...

Knobs (params.yaml, section pretrain):
- nproc_per_node: processes on this machine; one per GPU (rank i uses cuda:i, NCCL), or several
  CPU processes (gloo). 1 (with nnodes 1) trains in the stage's own process, no torchrun.
- nnodes: machines taking part. Every machine runs the same command (the pretrain stage, or the
  torchrun line it logs) against a shared workspace; torchrun's c10d rendezvous assigns the ranks.
- rdzv_endpoint: HOST:PORT of the rendezvous (any one node, reachable from all); "" means a
  standalone rendezvous on a free local port, which only works with nnodes 1.

Failure handling: torchrun runs with --max-restarts 0, so one failed rank ends the job (torchrun
stops the others). Each rank's entry point is wrapped in torch's @record, which writes the rank's
exception into an error file under --log-dir; RankFailed carries the root cause (the earliest
error that is not a peer's "connection closed" echo), the rank and torchrun's exit code. A rank that
hangs is bounded by the process-group timeout (ssl_core.training.distributed) and by `timeout_s` here.
"""
from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

# Errors a rank reports only because another rank died first (gloo/NCCL/TCPStore echoes).
_PEER_ECHO = re.compile(r"closed by peer|Connection reset|remote worker crashing|Broken pipe|"
                        r"NCCL communicator was aborted|Socket Timeout|recvValue failed|"
                        r"failed to recv|connection refused", re.IGNORECASE)


@dataclass(frozen=True)
class LaunchSpec:
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = ""             # "" = --standalone (single node)
    rdzv_id: str = "ssl-pipeline"       # the job id every node of one run must share

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def check(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ValueError("pretrain.nproc_per_node and pretrain.nnodes must be >= 1")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("pretrain.nnodes > 1 needs pretrain.rdzv_endpoint (HOST:PORT reachable from every node)")


class RankFailed(RuntimeError):
    """A training rank failed (or the job timed out); the message holds the rank's own error."""

    def __init__(self, message: str, exit_code: int | None, rank: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.rank = rank


def torchrun_command(target: str, args: Sequence[str], spec: LaunchSpec, log_dir: str | Path,
                     module: bool = True) -> list[str]:
    """The torchrun command line; target is a module (`-m`) or a script path."""
    spec.check()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(spec.nproc_per_node),
           "--nnodes", str(spec.nnodes), "--max-restarts", "0", "--log-dir", str(log_dir)]
    if spec.rdzv_endpoint:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", spec.rdzv_endpoint, "--rdzv-id", spec.rdzv_id]
    else:
        cmd += ["--standalone"]
    cmd += (["-m", target] if module else [str(target)]) + [str(a) for a in args]
    return cmd


def root_cause(log_dir: str | Path) -> tuple[int, str] | None:
    """(local rank, error message) of the failure that started it all, from torchrun's error files."""
    failures = []
    for path in Path(log_dir).rglob("error.json"):
        try:
            report = json.loads(path.read_text()).get("message", "")
        except (OSError, ValueError):
            continue
        text = report.get("message", "") if isinstance(report, dict) else str(report)
        stamp = int(report.get("extraInfo", {}).get("timestamp", 0)) if isinstance(report, dict) else 0
        rank = int(path.parent.name) if path.parent.name.isdigit() else -1
        failures.append((bool(_PEER_ECHO.search(text)), stamp, rank, text.strip()))
    if not failures:
        return None
    _, _, rank, text = min(failures)
    return rank, text


def run_torchrun(target: str, args: Sequence[str], spec: LaunchSpec, *, module: bool = True,
                 env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 timeout_s: float | None = None, on_line: Callable[[str], None] | None = None) -> None:
    """Run `target` on spec.world_size ranks and wait. Raises RankFailed with the failing rank's error.

    Output of every rank is streamed line by line to on_line. The torchrun process tree gets its own
    session so that it can be stopped as a whole (timeout, Ctrl-C, an exception here).
    """
    log_dir = tempfile.mkdtemp(prefix="ssl-torchrun-")
    cmd = torchrun_command(target, args, spec, log_dir, module=module)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    if on_line:   # the line other nodes of a multi-node job run too
        on_line("launching: " + " ".join(shlex.quote(part) for part in cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=env, cwd=cwd, start_new_session=True)

    def pump() -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if on_line:
                on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise RankFailed(f"distributed training did not finish within {timeout_s:.0f} s and was stopped",
                             exit_code=None) from None
        reader.join(timeout=10)
        if code != 0:
            raise _failure(code, log_dir, spec, list(tail))
    finally:
        if proc.poll() is None:
            _stop(proc)
        shutil.rmtree(log_dir, ignore_errors=True)


def _failure(code: int, log_dir: str, spec: LaunchSpec, tail: list[str]) -> RankFailed:
    cause = root_cause(log_dir)
    where = "" if spec.nnodes == 1 else "local "
    if cause is not None:
        rank, text = cause
        return RankFailed(f"distributed training failed on {where}rank {rank}: {text} (torchrun exit code {code})",
                          exit_code=code, rank=rank)
    last = "\n".join(line for line in tail if line.strip())[-2000:]
    return RankFailed(f"distributed training failed (torchrun exit code {code}) and no rank reported an "
                      f"error (killed? out of memory?); last output:\n{last}", exit_code=code)


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the torchrun process group (torchrun forwards it to the ranks), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
