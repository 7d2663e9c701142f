"""The files of a dataset version that DVC pinned, read from the DVC cache by its md5.

A `.dvc` file pins a folder as `<md5>.dir`; DVC 3 keeps that listing in its cache as JSON
(`files/md5/<2 chars>/<rest>.dir`: [{"md5", "relpath"}, ...]) and each file under its own md5. So a
version the workspace no longer holds (the champion's training pool) can still be read file by file,
without checking it out, as long as the cache (or `dvc fetch` of its .dvc file) has it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ssl_core.data.listing import IMAGE_EXTENSIONS
from ssl_pipeline.versioning.workspace import dvc


class VersionNotCached(FileNotFoundError):
    """The dataset version is not in the DVC cache."""


@dataclass(frozen=True)
class VersionFile:
    relpath: str    # inside the dataset folder
    md5: str        # DVC's md5 of the file's bytes
    path: Path      # the file in the DVC cache


def cache_dir(root: Path) -> Path:
    out = dvc("cache", "dir", cwd=root).stdout.strip().splitlines()
    return Path(out[-1]) if out else Path(root) / ".dvc" / "cache"


def _object(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def version_files(root: Path, dir_md5: str, images_only: bool = True) -> list[VersionFile]:
    """Every file of the folder version `dir_md5` (as a .dvc file pins it, `<hex>.dir`), in relpath order.

    images_only: keep what prepare would read (supported extensions, no hidden files)."""
    cache = cache_dir(Path(root))
    listing = _object(cache, dir_md5)
    if not dir_md5.endswith(".dir") or not listing.exists():
        raise VersionNotCached(f"the dataset version {dir_md5} is not in the DVC cache ({cache}); "
                               "`dvc fetch` its .dvc file from a commit that pinned it, or pull from the remote")
    entries = json.loads(listing.read_text())
    files = []
    for entry in sorted(entries, key=lambda e: e["relpath"]):
        rel = entry["relpath"]
        if images_only and (Path(rel).suffix.lower() not in IMAGE_EXTENSIONS
                            or any(part.startswith(".") for part in Path(rel).parts)):
            continue
        path = _object(cache, entry["md5"])
        if path.exists():
            files.append(VersionFile(rel, entry["md5"], path))
    return files
