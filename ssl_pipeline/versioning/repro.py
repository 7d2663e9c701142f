"""Run one DVC stage (`dvc repro --single-item STAGE`) with its output streamed line by line.

DVC stays the record of what ran (dvc.lock); this wrapper adds the workspace lock, the venv on
PATH for the stage commands, and the tracking context in the environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from ssl_pipeline.versioning.workspace import DvcError, child_env, dvc_root, workspace_lock

def stage_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = child_env(str(dvc_root(root)))
    # dvc.yaml says `python -m ssl_pipeline ...`: make that the interpreter running us.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def repro_stage(stage: str, root: Path = Path("."), extra_env: dict[str, str] | None = None,
                on_line: Callable[[str], None] = print, force: bool = False, options: list[str] | None = None) -> bool:
    """Reproduce one stage; returns True if it ran, False if DVC found it unchanged. options: more
    `dvc repro` options (e.g. --allow-missing in a run workspace without the images)."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else []) + list(options or [])
    tail: list[str] = []
    ran = True
    with workspace_lock(root):
        proc = subprocess.Popen(cmd, cwd=root, env=stage_env(root, extra_env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            on_line(line)
            tail = (tail + [line])[-25:]
            if "didn't change, skipping" in line:
                ran = False
        code = proc.wait()
    if code != 0:
        # The stage's own `error:` line says why; DVC's "ERROR: failed to reproduce" only that it failed.
        reason = next((t for t in reversed(tail) if t.startswith("error:")),
                      next((t for t in reversed(tail) if t.startswith("ERROR")), tail[-1] if tail else ""))
        raise StageFailed(f"stage {stage!r} failed (exit {code}): {reason.removeprefix('error: ')}", tail[-12:])
    return ran


class StageFailed(DvcError):
    """A stage's command failed: one line with its own error; `tail` holds its last output lines
    (already streamed to the log as they came; the CLI shows them again with --debug)."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail
