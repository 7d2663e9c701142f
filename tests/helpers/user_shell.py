"""Run commands the way a user types them (`make run`, `ssl-pipeline data import ...`) in a project copy,
with this interpreter standing in for the Makefile's `.venv`, so nothing is installed.

    from user_shell import project_copy, shell
    root = project_copy(tmp_path / "proj")          # code, Makefile, dvc.yaml, params.yaml: a git + DVC repo
    shell("make run", root, venv)                    # -> CompletedProcess, output in .stdout
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from fixtures_repo import PROJECT_ROOT

# What a clone of the project holds (besides docs and tests).
PROJECT_FILES = ("Makefile", "dvc.yaml", "params.yaml", "pyproject.toml", "prefect.yaml", ".gitignore", ".dvcignore",
                 "README.md")
PROJECT_PACKAGES = ("ssl_core", "ssl_pipeline", "flows")


def tool_venv(where: Path) -> Path:
    """A folder shaped like the Makefile's `.venv` whose tools are this interpreter. Its `.installed`
    marker is newer than any pyproject.toml, so `make VENV=<it> ...` installs nothing; its `pip` refuses."""
    bin_dir = Path(where) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    # `python -m` puts the working directory first on sys.path: commands run the project copy's code.
    scripts = {"python": f'exec "{sys.executable}" "$@"',
               "ssl-pipeline": f'exec "{sys.executable}" -m ssl_pipeline "$@"',
               "pip": 'echo "tests never install packages" >&2; exit 1'}
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    marker = Path(where) / ".installed"
    marker.touch()
    os.utime(marker, (2**31 - 1, 2**31 - 1))
    return Path(where)


def user_env(venv: Path, home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: the venv's tools first on PATH, no test-only tracking URI."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH", "PREFECT_API_URL")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    env["VENV"] = str(venv)   # the Makefile's `VENV ?= .venv`
    if home is not None:
        env["HOME"] = str(home)
    env.update(extra)
    return env


def shell(script: str, cwd: Path, env: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run `script` with bash -e in `cwd`; stdout and stderr together in .stdout."""
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, stdin=subprocess.DEVNULL)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def project_copy(root: Path, params: dict | None = None) -> Path:
    """The project's code and configuration at `root`, committed in a fresh git + DVC repository (as a
    clone would have it, without the committed data records); `params` overrides params.yaml values."""
    from fixtures_repo import make_workspace
    from workspace import write_params

    root = make_workspace(Path(root).parent, Path(root).name)
    for name in PROJECT_FILES:
        if (PROJECT_ROOT / name).exists():
            shutil.copy(PROJECT_ROOT / name, root / name)
    for package in PROJECT_PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    if params is not None:
        write_params(root, params)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    return root
