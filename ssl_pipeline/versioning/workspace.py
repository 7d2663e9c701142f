"""The DVC layer: every call goes through the `dvc` CLI (`python -m dvc`), never DVC internals.

Why the CLI: it is DVC's stable interface, and it keeps DVC out of the torch-only training core.
Why a lock: two DVC processes in one workspace fail on DVC's own repo lock, and the CLI, the
Prefect flow and tests may all touch the same workspace; `dvc()` serializes them with an
inter-process `flock` keyed on the workspace, so concurrent callers wait instead of failing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import yaml

from ssl_core.fsutil import LockBusy, exclusive_lock
from ssl_pipeline.config.schema import RAW_DATASETS as DATASETS

# How DVC puts cached files into the workspace, first that the filesystem allows: a reflink (copy on
# write: no second copy, safe to edit), else a hard link (no second copy; DVC makes the file read-only,
# and writing into it in place would change the cached copy too), else a symlink (the cache may be on
# another filesystem), else a copy (twice the disk). An import of 200k files then does not double the
# disk. A cache.type the user set is left alone. README: "Your data at scale" has the trade-offs.
# reflink is listed only where the filesystem really clones: on ext4, DVC 3.67's "reflink" silently
# made full copies (measured: link count 1, both copies on disk), and the hard links never came.
CACHE_LINK_TYPES = "reflink,hardlink,symlink,copy"
CACHE_LINK_TYPES_NO_REFLINK = "hardlink,symlink,copy"
_FICLONE = 0x40049409   # Linux ioctl: clone a file's extents (btrfs, XFS with reflink, ...)


def reflink_works(folder: Path) -> bool:
    """Whether `folder`'s filesystem clones files copy-on-write (tried on two temporary files)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder) as src, tempfile.NamedTemporaryFile(dir=folder) as dst:
        src.write(b"x")
        src.flush()
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        except OSError:
            return False
    return True
LOCAL_REMOTE = "localremote"
LOCAL_REMOTE_DIR = ".dvc-remote"
# Set in the environment of every DVC child: a nested `dvc()` call (from a stage that
# `dvc repro` runs) must not wait for the lock its own parent holds.
_LOCK_HELD_ENV = "SSL_PIPELINE_DVC_LOCK_HELD"
_held = threading.local()  # roots this thread holds, so nested use in-process does not deadlock


class DvcError(RuntimeError):
    """A DVC (or git) command failed; the message carries the command and its stderr tail."""


class MissingDataError(FileNotFoundError):
    """A dataset the pipeline needs is not in the workspace; the message says how to get it."""


class RemoteUnavailable(MissingDataError, DvcError):
    """`dvc pull` could not get the data from the remote; the message says how to get it."""


def dvc_root(cwd: Path) -> Path:
    """The workspace DVC would use from `cwd`: the nearest ancestor holding `.dvc/`."""
    cwd = cwd.resolve()
    for candidate in (cwd, *cwd.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return cwd


def lock_path(cwd: str | Path) -> Path:
    # Outside the workspace on purpose: `dvc init` refuses to run when `.dvc/` already exists,
    # and a lock file inside the repo would show up in `git status`.
    key = hashlib.sha1(str(dvc_root(Path(cwd))).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ssl-pipeline-dvc-{key}.lock"


@contextlib.contextmanager
def workspace_lock(cwd: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the workspace's DVC lock, waiting up to `timeout` s (None: as long as it takes).

    Re-entrant within a thread, and across a process tree through the environment."""
    root = str(dvc_root(Path(cwd)))
    held = getattr(_held, "roots", None)
    if held is None:
        held = _held.roots = set()
    if os.environ.get(_LOCK_HELD_ENV) == root or root in held:
        yield
        return
    path = lock_path(root)

    def say_waiting(holder: str) -> None:
        print(f"waiting for another DVC command in {root} to finish ...", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(path, timeout=timeout, on_wait=say_waiting, notice_after=2.0))
        except LockBusy:
            raise DvcError(f"another DVC command is still running in {root} (lock {path})") from None
        held.add(root)
        try:
            yield
        finally:
            held.discard(root)


def child_env(root: str) -> dict[str, str]:
    """Environment for a DVC child process: marks the lock as held, analytics off."""
    env = dict(os.environ)
    env[_LOCK_HELD_ENV] = root
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _run(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise DvcError(f"`{what}` failed in {cwd} (exit {proc.returncode}):\n{tail}")
    return proc


# Old private names, still imported by ssl_core/repro.py.
_dvc_root, _child_env = dvc_root, child_env


def dvc(*args: str, cwd: str | Path, lock_timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `python -m dvc ARGS` in `cwd` under the workspace lock; raise DvcError on failure.

    Do not call it from a stage that `dvc repro` runs: DVC's own repo lock is taken then."""
    cwd = Path(cwd)
    root = str(dvc_root(cwd))
    with workspace_lock(cwd, timeout=lock_timeout):
        return _run([sys.executable, "-m", "dvc", *args], cwd, "dvc " + " ".join(args), env=child_env(root))


def git(*args: str, cwd: str | Path) -> subprocess.CompletedProcess:
    return _run(["git", *args], Path(cwd), "git " + " ".join(args))


def _git_toplevel(root: Path) -> Path | None:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None


def ensure_repo(root: str | Path) -> Path:
    """git init + dvc init + default local remote `.dvc-remote/` (git-ignored) + cache link types. Idempotent.

    An already configured default remote (e.g. the user pointed DVC at S3) or cache.type is left alone.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    top = _git_toplevel(root)
    if top is None:
        git("init", "-q", cwd=root)
        top = root
    if not (root / ".dvc").is_dir():
        # --subdir: the project may live inside a larger git repository.
        dvc("init", "-q", *([] if top == root else ["--subdir"]), cwd=root)
    config = _config(root)
    has_default = bool(config.get("core.remote"))
    if f"remote.{LOCAL_REMOTE}.url" not in config:
        # A relative url is stored relative to .dvc/config, so clones find their own folder.
        dvc("remote", "add", *([] if has_default else ["-d"]), LOCAL_REMOTE, LOCAL_REMOTE_DIR, cwd=root)
    elif not has_default:
        dvc("remote", "default", LOCAL_REMOTE, cwd=root)
    if "cache.type" not in config:
        links = CACHE_LINK_TYPES if reflink_works(root / ".dvc") else CACHE_LINK_TYPES_NO_REFLINK
        dvc("config", "cache.type", links, cwd=root)
    _ensure_gitignored(root, f"/{LOCAL_REMOTE_DIR}/")
    return root


def _config(root: Path) -> dict[str, str]:
    """DVC's merged config (repo, local, global, system) as {"core.remote": ..., ...}."""
    lines = dvc("config", "--list", cwd=root).stdout.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def default_remote(root: str | Path) -> tuple[str, str] | None:
    """(name, url) of the default DVC remote, or None."""
    config = _config(Path(root))
    name = config.get("core.remote")
    return (name, config.get(f"remote.{name}.url", "")) if name else None


def _ensure_gitignored(root: Path, pattern: str) -> None:
    path = root / ".gitignore"
    lines = path.read_text().splitlines() if path.exists() else []
    if pattern not in lines and pattern.rstrip("/") not in lines:
        path.write_text("\n".join([*lines, pattern]) + "\n")


def track(root: str | Path, paths: list[str]) -> dict[str, str]:
    """`dvc add` each data dir (writes `<path>.dvc`); returns {path: md5} as pinned there."""
    root = Path(root)
    if not paths:
        return {}
    dvc("add", "-q", *paths, cwd=root)
    return {p: dataset_md5(root, p) for p in paths}


def _dvc_file(root: Path, path: str) -> Path:
    return root / (path.rstrip("/") + ".dvc")


def dataset_md5(root: str | Path, path: str) -> str:
    """The md5 that `<path>.dvc` pins, exactly as DVC writes it (`<hex>.dir` for a folder)."""
    dvc_file = _dvc_file(Path(root), path)
    if not dvc_file.exists():
        raise MissingDataError(f"{path}: not tracked by DVC ({dvc_file.name} not found); "
                               "run `ssl-pipeline data demo` or `ssl-pipeline data import PATH --as unlabeled|labeled`")
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    if not outs or "md5" not in outs[0]:
        raise DvcError(f"{dvc_file}: no md5 recorded; re-run `dvc add {path}`")
    return str(outs[0]["md5"])


def dataset_md5s(root: str | Path, raw_dir: str = "data/raw") -> dict[str, str]:
    """{"data/raw/unlabeled": md5, ...} for every `<raw_dir>/*.dvc`."""
    root = Path(root)
    out = {}
    for dvc_file in sorted((root / raw_dir).glob("*.dvc")):
        path = f"{raw_dir.rstrip('/')}/{dvc_file.name[:-4]}"
        out[path] = dataset_md5(root, path)
    return out


def _present(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def require_data(root: str | Path, paths: list[str] | tuple[str, ...], may_be_empty: tuple[str, ...] = ()) -> None:
    """Raise MissingDataError naming every missing dataset and the command that brings it; a path in
    `may_be_empty` only has to exist (an empty unlabeled dataset, when the labeled images are the pool)."""
    root = Path(root)
    problems = []
    for path in paths:
        if _present(root / path) or (path in may_be_empty and (root / path).is_dir()):
            continue
        if (root / path).is_dir():
            problems.append(f"{path} holds no images: add some with `ssl-pipeline data import FOLDER --as "
                            f"{Path(path).name}` (or write the demo into an empty workspace: `ssl-pipeline data demo`)")
        elif _dvc_file(root, path).exists():
            problems.append(f"{path} is missing from the workspace but tracked by DVC ({path}.dvc): "
                            "`ssl-pipeline data pull` fetches it from the DVC remote")
        else:
            problems.append(f"{path} is missing and not tracked by DVC: create it with "
                            "`ssl-pipeline data demo` or `ssl-pipeline data import FOLDER --as unlabeled|labeled`")
    if problems:
        raise MissingDataError("data missing:\n  " + "\n  ".join(problems))


def require_datasets(root: str | Path, data) -> None:
    """What a pipeline run needs (data: the params' DataParams): labeled images, and the unlabeled dataset,
    which may be empty when the labeled images are the pool (it must exist: `prepare` depends on it)."""
    unlabeled = f"{data.raw_dir.rstrip('/')}/unlabeled"
    require_data(root, [f"{data.raw_dir.rstrip('/')}/labeled", unlabeled],
                 may_be_empty=(unlabeled,) if data.pool_includes_labeled else ())


def push(root: str | Path, remote: str | None = None) -> str:
    return dvc("push", *(["-r", remote] if remote else []), cwd=root).stdout


def pull(root: str | Path, targets: list[str] | None = None, remote: str | None = None) -> str:
    """`dvc pull` (all .dvc files / stage outputs, or only `targets`, e.g. ["data/raw/labeled.dvc"]).
    When the remote cannot give the data, RemoteUnavailable says in one sentence how to get it."""
    try:
        return dvc("pull", *(["-r", remote] if remote else []), *(targets or []), cwd=root).stdout
    except DvcError as err:
        raise RemoteUnavailable(_unreachable(Path(root), remote, err)) from None


def _unreachable(root: Path, remote: str | None, err: DvcError) -> str:
    config = _config(root)
    name = remote or config.get("core.remote")
    url = config.get(f"remote.{name}.url", "") if name else ""
    local = (root / ".dvc" / url).resolve() if url and "://" not in url else None   # absolute urls stay as they are
    if not name:
        where = "no DVC remote is configured"
    elif local is not None and not (local.is_dir() and any(local.iterdir())):
        where = f"the default DVC remote {name!r} is {local}, a folder of this clone only, and it is empty"
    else:
        where = f"the DVC remote {name!r} ({url}) could not give it ({str(err).splitlines()[-1][:160]})"
    return (f"cannot fetch the data: {where}; point DVC at the remote your team pushed to "
            "(`dvc remote add -d team s3://bucket/path`) and rerun `ssl-pipeline data pull`, "
            "or write the demo data with `ssl-pipeline data demo`")


def _count_files(folder: Path) -> int:  # non-hidden files, as prepare sees them
    return sum(1 for _, _, files in os.walk(folder) for f in files if not f.startswith("."))


def status(root: str | Path, raw_dir: str = "data/raw", cloud: bool = False) -> dict:
    """For `ssl-pipeline data status`: each dataset's presence, pinned md5, file count and
    workspace state ("ok" | "modified" | "deleted" | "untracked" | "missing"), plus the remote.
    `cloud=True` also asks the remote which pinned data it lacks (`dvc status -c`)."""
    root = Path(root)
    names = {f"{raw_dir.rstrip('/')}/{d}" for d in DATASETS}
    names |= set(dataset_md5s(root, raw_dir)) if (root / raw_dir).is_dir() else set()
    tracked = [p for p in sorted(names) if _dvc_file(root, p).exists()]
    changes = _changed_outs(root, [f"{p}.dvc" for p in tracked]) if tracked else {}
    datasets = {}
    for path in sorted(names):
        present, is_tracked = _present(root / path), path in tracked
        if is_tracked:
            state = changes.get(path, "ok")
        else:
            state = "untracked" if present else "missing"
        datasets[path] = {
            "present": present,
            "tracked": is_tracked,
            "md5": dataset_md5(root, path) if is_tracked else None,
            "files": _count_files(root / path) if present else 0,
            "state": state,
        }
    remote = default_remote(root)
    result = {"datasets": datasets, "remote": {"name": remote[0], "url": remote[1]} if remote else None}
    if cloud and tracked:
        out = _json_out(dvc("status", "-c", "--json", *[f"{p}.dvc" for p in tracked], cwd=root))
        # Keys are the datasets and their files; report datasets only.
        result["not_on_remote"] = sorted(k for k in out if k in tracked)
    return result


def _json_out(proc: subprocess.CompletedProcess) -> dict:
    # --json output is the last stdout line; anything before it is DVC chatter.
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def _changed_outs(root: Path, dvc_files: list[str]) -> dict[str, str]:
    out = _json_out(dvc("status", "--json", *dvc_files, cwd=root))
    changes: dict[str, str] = {}
    for entries in out.values():
        for entry in entries:
            if isinstance(entry, dict):
                changes.update(entry.get("changed outs", {}))
    return changes
