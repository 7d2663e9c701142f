"""Run `ssl-pipeline ui` as a real subprocess in tests: read its output on a thread, find the
server URLs and pids it prints, and always leave no server behind."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ssl_pipeline.serving import servers

# A loaded 2-core CI machine can need minutes to import MLflow/Prefect; an idle one ~10 s.
READY_S = 300
_LINE = re.compile(r"^(MLflow|Prefect)\s+(http://\S+).*pid (\d+)")


class UiProcess:
    def __init__(self, root: Path, env: dict[str, str], *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ssl_pipeline", "ui", "--mlflow-port", "0", "--prefect-port", "0", "--workers", "1",
             "--timeout", str(READY_S), *args],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        self.lines: list[str] = []
        self.urls: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = _LINE.match(line)
            if match:
                self.urls[match[1]] = match[2]
                self.pids[match[1]] = int(match[3])

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_started(self, timeout: float = READY_S + 60) -> None:
        deadline = time.monotonic() + timeout
        while not any("Ctrl-C stops" in line for line in self.lines):
            assert self.proc.poll() is None, f"ui exited with {self.proc.returncode}:\n{self.output}"
            assert time.monotonic() < deadline, f"ui did not start in {timeout} s:\n{self.output}"
            time.sleep(0.2)

    def wait_exit(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        """Teardown: whatever state the test left, no process survives."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        for pid in self.pids.values():
            if servers.group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        self._reader.join(10)


def ui_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_TRACKING_"))}
    env.update(PREFECT_HOME=str(root / "prefect-home"), PYTHONUNBUFFERED="1", **extra)
    return env
