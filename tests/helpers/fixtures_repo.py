"""A real workspace for tests: git repo + `dvc init` + the default local DVC remote.

Import it from any test (tests/helpers/ is on sys.path through tests/conftest.py):

    from fixtures_repo import make_workspace
    root = make_workspace(tmp_path)          # -> tmp_path / "ws"

Setting a workspace up runs several DVC commands (a few seconds on a busy 2-core machine), so
the first call builds a template once per test process and every call copies it.
"""
from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path

from ssl_pipeline.versioning import workspace as dvcops

HELPERS = Path(__file__).resolve().parent
PROJECT_ROOT = HELPERS.parents[1]
_template: Path | None = None


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _build_template() -> Path:
    base = Path(tempfile.mkdtemp(prefix="ssl-ws-template-"))
    atexit.register(shutil.rmtree, base, True)
    root = base / "ws"
    root.mkdir()
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "tests@example.invalid")
    _git(root, "config", "user.name", "ssl-pipeline tests")
    # The project's ignore rules, so DVC meets the same .gitignore as in the real project.
    shutil.copy(PROJECT_ROOT / ".gitignore", root / ".gitignore")
    dvcops.ensure_repo(root)
    _git(root, "add", ".gitignore", ".dvc", ".dvcignore")
    _git(root, "commit", "-q", "-m", "workspace")
    return root


def make_workspace(tmp_path: Path, name: str = "ws") -> Path:
    """A fresh git + DVC workspace at tmp_path/name with one commit and the `localremote`
    remote (-> .dvc-remote/, git-ignored) as the default. Returns its path."""
    global _template
    if _template is None or not _template.exists():
        _template = _build_template()
    root = Path(tmp_path) / name
    shutil.copytree(_template, root, symlinks=True)
    return root
