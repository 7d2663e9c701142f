"""How a dataset stores imported images: each file named by its content, each import in its own folder.

    unlabeled/import-0003/<md5>.<ext>
    labeled/<split>/<class>/import-0003/<md5>.<ext>

A name is the file's md5 plus one extension per format (.jpeg -> .jpg, .tiff -> .tif), so the same image
imported twice gets the same name, and which images a dataset holds is read from the names, without
reading the files. Names carry neither the class nor the source order. An import's folder is what
`ssl-pipeline data remove` deletes; files outside any import folder are "loose" (the demo, or data
placed by hand), hashed when needed.
"""
from __future__ import annotations

import array
import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from ssl_core.data.listing import EXT_TO_FORMAT
from ssl_pipeline.ingest.records import IMPORT_FOLDER_PREFIX

CANONICAL_EXT: dict[str, str] = {}
for _ext, _format in EXT_TO_FORMAT.items():
    CANONICAL_EXT.setdefault(_format, _ext)
_HASHED_NAME = re.compile(r"[0-9a-f]{32}")


class DataImportError(ValueError):
    """The folder cannot be imported as asked; the message says why and what to do."""


class UnsafePathError(DataImportError):
    """A path would escape the source or the data directory."""


class DataExistsError(DataImportError):
    """The destination holds data that the command would replace without being told to."""


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def canonical_ext(ext: str) -> str:
    """One extension per format (.jpeg -> .jpg); arrays (.npy) have no PIL format and keep theirs."""
    ext = ext.lower()
    return CANONICAL_EXT[EXT_TO_FORMAT[ext]] if ext in EXT_TO_FORMAT else ext


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def md5_from_name(name: str) -> str | None:
    stem, ext = os.path.splitext(name)
    return stem if _HASHED_NAME.fullmatch(stem) and ext.lower() in EXT_TO_FORMAT else None


def is_import_folder(name: str) -> bool:
    return name.startswith(IMPORT_FOLDER_PREFIX)


def place_of(rel_parts: tuple[str, ...], labeled: bool) -> str:
    """Where a file sits in its dataset: "<split>/<class>" for labeled data, "" for the unlabeled pool."""
    return "/".join(rel_parts[:2]) if labeled and len(rel_parts) >= 3 else ""


def dataset_files(root: Path, labeled: bool, folder: str | None = None) -> Iterator[tuple[Path, str]]:
    """(file, place) for every non-hidden file of a dataset, streamed folder by folder (memory does not
    grow with the files); folder="" gives loose files only, an import folder's name the files of that
    import only, None all of them."""
    if not root.is_dir():
        return
    pending = [(root, (), "")]   # (folder, its parts below root, the import folder it is in)
    while pending:
        here, rel, in_import = pending.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    inner = in_import or (entry.name if is_import_folder(entry.name) else "")
                    if folder is None or inner in ("", folder) and not (folder == "" and inner):
                        pending.append((Path(entry.path), rel + (entry.name,), inner))
                elif folder is None or in_import == folder:
                    yield Path(entry.path), place_of(rel + (entry.name,), labeled)


class ContentDigest:
    """One digest for a set of files, from their "<place>/<name> <md5>" lines, whatever their order:
    the sum of the lines' md5s modulo 2**128 (constant memory for any number of files)."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, line: str) -> None:
        self.total = (self.total + int(hashlib.md5(line.encode()).hexdigest(), 16)) % (1 << 128)

    def hexdigest(self) -> str:
        return f"{self.total:032x}"


def import_summary(root: Path, labeled: bool, folder: str) -> tuple[int, str]:
    """(files, md5) of one import as it is now: from the names for an import folder, from the bytes for
    loose files."""
    digest, count = ContentDigest(), 0
    for path, place in dataset_files(root, labeled, folder):
        md5 = md5_from_name(path.name) if folder else None
        digest.add(f"{place}/{path.name} {md5 or file_md5(path)}")
        count += 1
    return count, digest.hexdigest() if count else ""


def import_dirs(root: Path, labeled: bool, folder: str) -> list[Path]:
    """The folders that hold one import's files in a dataset."""
    candidates = root.glob(f"*/*/{folder}") if labeled else [root / folder]
    return sorted(p for p in candidates if p.is_dir())


class ContentIndex:
    """Which images a dataset already holds, and where: md5 -> place, 20 bytes per file (sorted numpy
    arrays, binary search). Built from the names; loose files are hashed once. This import's own
    labeled additions are kept in a dict (a labeled set is the smaller one)."""

    def __init__(self, root: Path | None, labeled: bool):
        places: dict[str, int] = {}
        digests, codes = bytearray(), array.array("i")
        for path, place in (dataset_files(root, labeled) if root is not None else ()):
            digests += bytes.fromhex(md5_from_name(path.name) or file_md5(path))
            codes.append(places.setdefault(place, len(places)))
        keys = np.frombuffer(bytes(digests), dtype="S16")
        order = np.argsort(keys, kind="stable")
        self.digests, self.codes = keys[order], np.frombuffer(codes, dtype=np.int32)[order]
        self.places = list(places)
        self.added: dict[str, str] = {}

    def find(self, md5: str) -> str | None:
        key = np.array([bytes.fromhex(md5)], dtype="S16")
        i = int(np.searchsorted(self.digests, key)[0])
        if i < len(self.digests) and self.digests[i] == key[0]:
            return self.places[self.codes[i]]
        return self.added.get(md5)

    def note(self, md5: str, place: str, labeled: bool) -> None:
        if labeled:
            self.added[md5] = place


def swap_in(staged: Path, dest: Path, replace: bool) -> None:
    """Move a finished `staged` folder to `dest`; an existing `dest` goes (to the trash) only if `replace`."""
    if (dest.exists() or dest.is_symlink()) and not replace:
        raise DataExistsError(f"{dest} already holds data")
    if dest.exists() or dest.is_symlink():
        remove_folder(dest, staged.parent)
    os.rename(staged, dest)


def remove_folder(path: Path, trash_dir: Path) -> None:
    """Remove a folder by renaming it into `trash_dir` (same file system, outside any dataset) first,
    so a crash leaves the folder whole or gone, never half of it inside a dataset."""
    trash = Path(trash_dir) / f".trash-{uuid.uuid4().hex[:12]}"
    os.rename(path, trash)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash)
    else:
        trash.unlink()


def prune_empty(root: Path) -> None:
    """Remove class and split folders that an import's removal left empty (the dataset folder stays)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        if here != root and not filenames and not any((here / d).exists() for d in dirnames):
            here.rmdir()
