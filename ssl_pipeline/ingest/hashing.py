"""The content hash (md5) of every raw image file, without reading files whose hash is already known.

Where a file's md5 comes from, cheapest first:
1. the stat cache of the previous prepare (.ssl-pipeline/prepare-md5s.tsv: path, size, mtime_ns,
   inode -> md5; the same test DVC's own state database makes),
2. DVC's record of the dataset: `data/raw/<dataset>.dvc` names a `.dir` object in the DVC cache that
   lists every file's md5 (DVC computed them at `dvc add`). Used for a file only when the file is not
   newer than the `.dvc` file, i.e. unchanged since DVC hashed it,
3. reading the file (in the decode workers).
The md5 is the same as DVC's (of the file's bytes), so the cache keys match what `dvc status` checks.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import yaml

from ssl_core.data.decode_task import hash_files
from ssl_core.data.listing import relative_posix

STAT_CACHE = Path(".ssl-pipeline/prepare-md5s.tsv")
Runner = Callable   # runner(fn, tasks) -> results in task order (ssl_pipeline/ingest/workers.py)


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _read_stat_cache(root: Path) -> dict[str, tuple[tuple[int, int, int], str]]:
    path = root / STAT_CACHE
    out: dict[str, tuple[tuple[int, int, int], str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 5:
                out[parts[0]] = ((int(parts[1]), int(parts[2]), int(parts[3])), parts[4])
    return out


def _write_stat_cache(root: Path, known: dict[str, tuple[tuple[int, int, int], str]]) -> None:
    path = root / STAT_CACHE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        for rel, ((size, mtime, ino), md5) in sorted(known.items()):
            fh.write(f"{rel}\t{size}\t{mtime}\t{ino}\t{md5}\n")
    os.replace(tmp, path)


def dvc_file_md5s(root: Path, raw_dir: Path, dataset: str) -> tuple[dict[str, str], int]:
    """{path relative to raw_dir: md5} from DVC's .dir object of raw_dir/<dataset>, and the .dvc file's
    mtime_ns (files newer than it changed after DVC hashed them). Empty when DVC has no record."""
    dvc_file = raw_dir / f"{dataset}.dvc"
    try:
        outs = yaml.safe_load(dvc_file.read_text())["outs"][0]
        digest = outs["md5"]
        if not digest.endswith(".dir"):
            return {}, 0
        obj = root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
        entries = json.loads(obj.read_text())
        mtime = dvc_file.stat().st_mtime_ns
    except (OSError, ValueError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return {}, 0
    return {f"{dataset}/{e['relpath']}": e["md5"] for e in entries if "relpath" in e and "md5" in e}, mtime


def content_md5s(root: Path, raw_dir: Path, paths: list[Path], runner: Runner,
                 datasets: tuple[str, ...] = ("labeled", "unlabeled"), chunk: int = 512) -> tuple[list[str | None], dict]:
    """md5 of each file (None: unreadable) and where they came from: {"stat_cache", "dvc", "read"}."""
    cached = _read_stat_cache(root)
    dvc: dict[str, str] = {}
    dvc_mtime: dict[str, int] = {}
    for ds in datasets:
        md5s, mtime = dvc_file_md5s(root, raw_dir, ds)
        dvc.update(md5s)
        dvc_mtime.update({ds: mtime})
    out: list[str | None] = [None] * len(paths)
    stats: list[tuple[int, int, int] | None] = [None] * len(paths)
    todo: list[int] = []
    used = {"stat_cache": 0, "dvc": 0, "read": 0}
    rels = [relative_posix(p, raw_dir) for p in paths]
    for i, (path, rel) in enumerate(zip(paths, rels)):
        stats[i] = key = _stat_key(path)
        if key is None:
            continue
        hit = cached.get(rel)
        if hit and hit[0] == key:
            out[i], used["stat_cache"] = hit[1], used["stat_cache"] + 1
        elif rel in dvc and key[1] <= dvc_mtime.get(rel.split("/", 1)[0], 0):
            out[i], used["dvc"] = dvc[rel], used["dvc"] + 1
        else:
            todo.append(i)
    tasks = [tuple(str(paths[i]) for i in todo[k:k + chunk]) for k in range(0, len(todo), chunk)]
    for k, md5s in enumerate(runner(hash_files, tasks)):
        for i, md5 in zip(todo[k * chunk:(k + 1) * chunk], md5s):
            out[i] = md5
    used["read"] = len(todo)
    known = {rel: (stat, md5) for rel, stat, md5 in zip(rels, stats, out) if stat is not None and md5 is not None}
    _write_stat_cache(root, known)
    return out, used
