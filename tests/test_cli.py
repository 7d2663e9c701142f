"""The CLI's exit paths that are about the terminal rather than a command."""
from __future__ import annotations

import os
import subprocess
import sys

from fixtures_repo import PROJECT_ROOT


def test_a_closed_stdout_pipe_ends_quietly_with_sigpipes_status():
    """`ssl-pipeline config | head`: once the reader is gone the command stops without an `error:` line."""
    read_end, write_end = os.pipe()
    os.close(read_end)   # the reader left before the first byte: every write to stdout is EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "ssl_core", "config"], cwd=PROJECT_ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""
