"""The DVC layer against a real git + DVC workspace in a temp dir (no mocks)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fixtures_repo import PROJECT_ROOT, make_workspace
from ssl_pipeline.versioning import workspace as dvcops
from ssl_pipeline.versioning.workspace import DvcError, MissingDataError


def _write_dataset(root: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = root / "data" / "raw" / name
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def _reference_dir_md5(folder: Path) -> str:
    """DVC's folder hash, computed independently: md5 of the sorted JSON list of file md5s."""
    entries = sorted(
        ({"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.relative_to(folder).as_posix()}
         for p in folder.rglob("*") if p.is_file()),
        key=lambda e: e["relpath"],
    )
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


LABELED = {"train/0/a.png": b"zero-a", "train/1/b.png": b"one-b", "test/0/c.png": b"zero-c"}
UNLABELED = {"img_000001.png": b"u1", "img_000002.png": b"u2"}


def test_ensure_repo_fresh_dir_is_idempotent(tmp_path):
    root = dvcops.ensure_repo(tmp_path / "fresh")
    assert (root / ".git").is_dir() and (root / ".dvc").is_dir()
    assert dvcops.default_remote(root) == (dvcops.LOCAL_REMOTE, str(root / dvcops.LOCAL_REMOTE_DIR))
    # Stored relative to .dvc/config, so a clone uses its own .dvc-remote/ folder.
    assert "url = ../.dvc-remote" in (root / ".dvc" / "config").read_text()
    assert "/.dvc-remote/" in (root / ".gitignore").read_text().splitlines()
    config = (root / ".dvc" / "config").read_text()
    gitignore = (root / ".gitignore").read_text()
    dvcops.ensure_repo(root)
    assert (root / ".dvc" / "config").read_text() == config
    assert (root / ".gitignore").read_text() == gitignore


def test_ensure_repo_keeps_a_default_remote_the_user_chose(tmp_path):
    root = make_workspace(tmp_path)
    dvcops.dvc("remote", "add", "-d", "elsewhere", str(tmp_path / "other-remote"), cwd=root)
    dvcops.ensure_repo(root)
    assert dvcops.default_remote(root) == ("elsewhere", str(tmp_path / "other-remote"))


def test_track_push_delete_pull_roundtrip(tmp_path):
    root = make_workspace(tmp_path)
    lab = _write_dataset(root, "labeled", LABELED)
    unl = _write_dataset(root, "unlabeled", UNLABELED)
    before = {"labeled": _tree(lab), "unlabeled": _tree(unl)}

    pinned = dvcops.track(root, ["data/raw/unlabeled", "data/raw/labeled"])
    assert pinned == {"data/raw/unlabeled": _reference_dir_md5(unl), "data/raw/labeled": _reference_dir_md5(lab)}
    assert (root / "data/raw/labeled.dvc").exists() and (root / "data/raw/unlabeled.dvc").exists()
    assert dvcops.dataset_md5s(root) == pinned
    # The data stays out of git; only the .dvc pointers are for git.
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/raw/labeled/train/0/a.png"], cwd=root)
    assert ignored.returncode == 0

    st = dvcops.status(root, cloud=True)
    assert st["remote"] == {"name": dvcops.LOCAL_REMOTE, "url": str(root / dvcops.LOCAL_REMOTE_DIR)}
    assert st["datasets"]["data/raw/labeled"] == {
        "present": True, "tracked": True, "md5": pinned["data/raw/labeled"], "files": 3, "state": "ok"}
    assert st["not_on_remote"] == ["data/raw/labeled", "data/raw/unlabeled"]

    dvcops.push(root)
    # A fresh clone: neither the data nor DVC's cache; only the remote can bring them back.
    shutil.rmtree(lab)
    shutil.rmtree(unl)
    shutil.rmtree(root / ".dvc" / "cache")
    assert dvcops.status(root)["datasets"]["data/raw/labeled"]["state"] == "not in cache"

    dvcops.pull(root)
    assert {"labeled": _tree(lab), "unlabeled": _tree(unl)} == before
    assert dvcops.dataset_md5s(root) == pinned
    assert _reference_dir_md5(lab) == pinned["data/raw/labeled"]


def test_status_reports_untracked_modified_and_deleted(tmp_path):
    root = make_workspace(tmp_path)
    lab = _write_dataset(root, "labeled", LABELED)
    unl = _write_dataset(root, "unlabeled", UNLABELED)
    st = dvcops.status(root)["datasets"]
    assert st["data/raw/unlabeled"] == {"present": True, "tracked": False, "md5": None, "files": 2, "state": "untracked"}
    assert st["data/raw/labeled"]["state"] == "untracked"

    dvcops.track(root, ["data/raw/labeled", "data/raw/unlabeled"])
    (lab / "train" / "0" / "a.png").write_bytes(b"changed")
    shutil.rmtree(unl)
    st = dvcops.status(root)["datasets"]
    assert st["data/raw/labeled"]["state"] == "modified"
    assert st["data/raw/unlabeled"] == {"present": False, "tracked": True, "md5": dvcops.dataset_md5(root, "data/raw/unlabeled"),
                                        "files": 0, "state": "deleted"}


def test_require_data_names_the_path_and_the_fix(tmp_path):
    root = make_workspace(tmp_path)
    _write_dataset(root, "labeled", LABELED)
    dvcops.track(root, ["data/raw/labeled"])
    dvcops.require_data(root, ["data/raw/labeled"])  # present: no error

    shutil.rmtree(root / "data/raw/labeled")  # as in a fresh clone: .dvc file, no data
    with pytest.raises(MissingDataError) as err:
        dvcops.require_data(root, ["data/raw/labeled", "data/raw/unlabeled"])
    msg = str(err.value)
    labeled_line = next(line for line in msg.splitlines() if "data/raw/labeled" in line)
    unlabeled_line = next(line for line in msg.splitlines() if "data/raw/unlabeled" in line)
    assert "ssl-pipeline data pull" in labeled_line
    assert "ssl-pipeline data demo" in unlabeled_line and "ssl-pipeline data import" in unlabeled_line
    assert "Traceback" not in msg


def test_dvc_error_carries_dvc_stderr(tmp_path):
    root = make_workspace(tmp_path)
    with pytest.raises(DvcError) as err:
        dvcops.dvc("add", "missing.txt", cwd=root)
    command_line, dvc_said = str(err.value).split("\n", 1)
    assert "dvc add missing.txt" in command_line and str(root) in command_line
    assert dvc_said.startswith("ERROR:") and "missing.txt" in dvc_said


def test_lock_serializes_dvc_calls_across_threads_and_processes(tmp_path):
    root = make_workspace(tmp_path)
    finished = threading.Event()

    def run_status():
        dvcops.dvc("status", cwd=root)
        finished.set()

    with dvcops.workspace_lock(root):
        worker = threading.Thread(target=run_status)
        worker.start()
        # While the lock is held, another thread cannot start DVC...
        assert not finished.wait(1.0)
        # ...nor can another process; with a timeout it gives up with a clear message.
        child = _python(f"from ssl_pipeline.versioning import workspace as dvcops; dvcops.dvc('status', cwd={str(root)!r}, lock_timeout=0.2)", root)
        assert child.wait(120) != 0
        assert "another DVC command is still running" in child.stderr.read()
        # This thread holds the lock, so its own calls re-enter instead of deadlocking.
        dvcops.dvc("status", cwd=root)
    worker.join(120)
    assert finished.is_set()


def test_concurrent_dvc_add_from_two_processes_both_succeed(tmp_path):
    root = make_workspace(tmp_path)
    _write_dataset(root, "labeled", LABELED)
    _write_dataset(root, "unlabeled", UNLABELED)
    children = [_python(f"from ssl_pipeline.versioning import workspace as dvcops; dvcops.track({str(root)!r}, ['data/raw/{name}'])", root)
                for name in ("labeled", "unlabeled")]
    for child in children:
        assert child.wait(120) == 0, child.stderr.read()
    assert set(dvcops.dataset_md5s(root)) == {"data/raw/labeled", "data/raw/unlabeled"}


def _python(code: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop(dvcops._LOCK_HELD_ENV, None)
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
