"""Reading a user's folder for an import: which files go where, and why every other entry does not.

Layouts:
- unlabeled: any tree of images.
- labeled, class layout: src/<class>/**/<image> -> labeled/train/<class>/ (`prepare` carves val/test).
- labeled, split layout: src/{train,test[,val]}/<class>/**/<image> -> labeled/<split>/<class>/, as given.

Nothing is opened here, and nothing outside `src` is looked at: a symlink whose target resolves outside
`src` is skipped, a symlinked folder is not followed, and a fifo, device or socket is never opened (it
could block forever). Every file or folder left out is listed with a reason: hidden entries (.DS_Store,
.git/), files that are not images, images outside any class folder, empty class folders, class folders
whose names cannot be a class (backslash, control character, not UTF-8, or the importer's own
`import-NNNN`), unreadable entries.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ssl_core.data.cache import LABELED_SPLITS
from ssl_core.data.listing import IMAGE_EXTENSIONS
from ssl_pipeline.ingest.store import DataImportError, inside, is_import_folder


@dataclass
class Plan:
    """What an import would copy: the images under each folder go to its place, "" (unlabeled) or
    "<split>/<class>". Files are listed twice (counted here, copied in files()), never held in a list:
    an import of millions of files does not hold millions of paths."""
    kind: str
    layout: str                                                   # "flat" | "class" | "split"
    src: Path = Path(".")
    folders: list[tuple[Path, str]] = field(default_factory=list)
    count: int = 0
    skipped: list[list[str]] = field(default_factory=list)        # [[path relative to src, reason], ...]
    classes: dict[str, list[str]] = field(default_factory=dict)   # split -> classes with images

    def files(self) -> Iterator[tuple[Path, str]]:
        """The second listing. A file that changed since the first (e.g. became a link out of `src`) is
        skipped here too and added to `skipped`: no file is left out without a reason."""
        reader = _Reader(self.src, recorded=self.skipped)
        for folder, place in self.folders:
            for path in reader.images_under(folder):
                yield path, place


class _Reader:
    def __init__(self, src: Path, recorded: list[list[str]] | None = None):
        """recorded: the skips of an earlier listing of `src`; new skips are appended to it, paths it
        already lists are not listed twice."""
        self.src = src
        self.skipped: list[list[str]] = [] if recorded is None else recorded
        self._paths = {path for path, _ in self.skipped}

    def skip(self, path: Path | str, reason: str) -> None:
        rel = Path(os.path.relpath(path, self.src)).as_posix()
        if rel not in self._paths:
            self._paths.add(rel)
            self.skipped.append([rel, reason])

    def folder_problem(self, path: Path) -> str | None:
        if path.name.startswith("."):
            return "hidden folder"
        if path.is_symlink():
            if not inside(Path(os.path.realpath(path)), self.src):
                return f"symlink escapes the source folder (-> {os.readlink(path)})"
            return "symlinked folder (not followed)"
        return None

    def file_problem(self, path: Path) -> str | None:
        if path.name.startswith("."):
            return "hidden file"
        try:
            if path.is_symlink():
                if not inside(Path(os.path.realpath(path)), self.src):
                    return f"symlink escapes the source folder (-> {os.readlink(path)})"
                if not os.path.exists(path):
                    return "broken symlink"
            mode = os.stat(path).st_mode   # a link inside src: what it points at
        except OSError as err:
            return f"unreadable ({err.strerror or err})"
        if stat.S_ISDIR(mode):
            return "symlinked folder (not followed)"
        if not stat.S_ISREG(mode):
            return "not a regular file (fifos, devices and sockets are never opened)"
        ext = path.suffix.lower()
        if ext not in IMAGE_EXTENSIONS:
            return f"not an image file ({ext or 'no extension'})"
        return None

    def images_under(self, folder: Path) -> Iterator[Path]:
        """Image files under `folder`, recursive and sorted; everything else is listed as skipped."""
        for dirpath, dirnames, filenames in os.walk(folder, onerror=self._unreadable_folder):
            here = Path(dirpath)
            for d in sorted(dirnames):
                reason = self.folder_problem(here / d)
                if reason:
                    dirnames.remove(d)
                    self.skip(here / d, reason)
            dirnames.sort()
            for name in sorted(filenames):
                reason = self.file_problem(here / name)
                if reason:
                    self.skip(here / name, reason)
                else:
                    yield here / name

    def _unreadable_folder(self, err: OSError) -> None:
        self.skip(err.filename, f"unreadable folder ({err.strerror or err})")

    def subfolders(self, folder: Path, what: str) -> list[Path]:
        """The usable folders directly in `folder`; files there and odd folders are listed as skipped."""
        try:
            entries = sorted(folder.iterdir())
        except OSError as err:
            self.skip(folder, f"unreadable folder ({err.strerror or err})")
            return []
        out = []
        for path in entries:
            is_dir = path.is_dir() and not path.is_symlink()
            reason = self.folder_problem(path) if path.is_dir() else (self.file_problem(path) or f"outside any {what}")
            if reason is None and is_dir and what == "class folder":
                reason = class_name_problem(path.name)
            if reason:
                self.skip(path, reason)
            else:
                out.append(path)
        return out


def class_name_problem(name: str) -> str | None:
    """Why a folder name cannot be a class name (it becomes a folder, a CSV cell, an MLflow tag)."""
    if "\\" in name:
        return "class folder name has a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "class folder name has a control character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "class folder name is not valid UTF-8"
    if is_import_folder(name):
        return "class folder name starts with 'import-' (the importer's own folder names)"
    return None


def plan_import(src: Path, kind: str) -> Plan:
    """The files of `src` (resolved, a folder) for an unlabeled or labeled import; see the module docstring."""
    reader = _Reader(src)
    if kind == "unlabeled":
        plan = Plan(kind, "flat", src, [(src, "")], sum(1 for _ in reader.images_under(src)))
        if not plan.count:
            raise DataImportError(f"{src}: no image files found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    else:
        plan = _labeled_plan(reader)
    plan.skipped = reader.skipped
    return plan


def _labeled_plan(reader: _Reader) -> Plan:
    src = reader.src
    top = reader.subfolders(src, "class folder")
    names = {p.name for p in top}
    if names & set(LABELED_SPLITS):
        if not names <= set(LABELED_SPLITS) or "train" not in names:
            raise DataImportError(
                f"{src}: mixes split folders ({', '.join(sorted(names & set(LABELED_SPLITS)))}) with other folders "
                f"({', '.join(sorted(names - set(LABELED_SPLITS))) or 'no train/'}); use either <class>/ folders "
                "or train/ [val/] test/ folders each holding <class>/ folders")
        splits, plan = {p.name: p for p in top}, Plan("labeled", "split", src)
    else:
        splits, plan = {"train": src}, Plan("labeled", "class", src)
    for split, folder in splits.items():
        for class_dir in (top if plan.layout == "class" else reader.subfolders(folder, "class folder")):
            count = sum(1 for _ in reader.images_under(class_dir))
            if not count:
                reader.skip(class_dir, "empty class folder (no images)")
                continue
            plan.classes.setdefault(split, []).append(class_dir.name)
            plan.folders.append((class_dir, f"{split}/{class_dir.name}"))
            plan.count += count
    if "train" not in plan.classes:
        raise DataImportError(f"{splits['train']}: no class folders with images found "
                              "(a labeled folder holds one folder of images per class)")
    return plan
