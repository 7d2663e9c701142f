"""Copy a user's image folder into the raw data directory, safely and atomically.

Layouts (the result is always flat per class, so `prepare` reads one fixed shape):
- kind="unlabeled": any tree of images -> raw_dir/unlabeled/img_000001.<ext>, ... (names are a
  seeded shuffle, so they never leak a class folder or the source order).
- kind="labeled", class layout: src/<class>/**/<image> -> raw_dir/labeled/train/<class>/. No test
  split is shipped, so `prepare` carves one (seeded, class-balanced) from labeled/train.
- kind="labeled", split layout: src/{train,test[,val]}/<class>/**/<image> ->
  raw_dir/labeled/{train,test[,val]}/<class>/. Used as given.
  `also_unlabeled=True` also writes the train (+val) images, without labels, to raw_dir/unlabeled
  (how CIFAR-10 enters: labeled, with the unlabeled pool being the same images without labels).

Safety: nothing outside `src` is ever read. Symlinks are never followed out of `src`: a symlink
whose target resolves outside `src` (e.g. `x.png -> ../../etc/passwd`) is skipped and listed in
the result; a symlinked folder is not descended. Destinations are checked to stay inside the
staging folder, existing data is never overwritten without replace=True, and the copy lands by
renaming a finished staging folder, so an interrupted import leaves the old data untouched.
Each file is opened without following links and copied only if it is still the file that was
checked (`copy_checked`): swapping a file for a link while the import runs cannot pull in outside data.
"""
from __future__ import annotations

import os
import random
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Literal

from ssl_core.data.cache import LABELED_SPLITS
from ssl_core.data.listing import IMAGE_EXTENSIONS

Progress = Callable[[int, int], None]  # progress(done, total)


class DataImportError(ValueError):
    """The folder cannot be imported as asked; the message says why and what to do."""


class UnsafePathError(DataImportError):
    """A path would escape the source or the data directory."""


class DataExistsError(DataImportError):
    """The destination already holds data and replace=True was not given."""


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _safe_name(name: str, what: str) -> str:
    # Names come from directory listings, so this only fires on hand-built calls; keep it anyway:
    # a destination is built from them.
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafePathError(f"{what} name {name!r} is not a plain file or folder name")
    return name


def _scan(folder: Path, src: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """Image files under `folder` (recursive, sorted), never leaving `src`; records skips."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            p = here / d
            if d.startswith("."):
                dirnames.remove(d)
            elif p.is_symlink():
                dirnames.remove(d)
                reason = "symlink escapes the source folder" if not _inside(p.resolve(), src) else "symlinked folder (not followed)"
                skipped.append((str(p.relative_to(src)), reason))
        dirnames.sort()
        for f in sorted(filenames):
            p = here / f
            rel = str(p.relative_to(src))
            if f.startswith("."):
                continue
            if p.is_symlink():
                target = p.resolve()
                if not _inside(target, src):
                    skipped.append((rel, f"symlink escapes the source folder (-> {os.readlink(p)})"))
                    continue
                if not target.is_file():
                    skipped.append((rel, "symlink to a non-file"))
                    continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((rel, "not an image file"))
                continue
            found.append(p)
    return found


def _subdirs(folder: Path, src: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_symlink():
            reason = "symlink escapes the source folder" if not _inside(p.resolve(), src) else "symlinked folder (not followed)"
            skipped.append((str(p.relative_to(src)), reason))
        elif p.is_dir():
            out.append(p)
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            skipped.append((str(p.relative_to(src)), "image outside any class folder"))
    return out


Plan = dict[str, dict[str, tuple[Path, list[Path]]]]  # {split: {class: (class folder, files)}}


def _labeled_plan(src: Path, skipped: list[tuple[str, str]]) -> tuple[Plan, str]:
    """The files of a labeled folder in class or split layout, and which layout it is."""
    top = _subdirs(src, src, skipped)
    names = {p.name for p in top}
    if names & set(LABELED_SPLITS):
        if not names <= set(LABELED_SPLITS) or "train" not in names:
            raise DataImportError(
                f"{src}: mixes split folders ({', '.join(sorted(names & set(LABELED_SPLITS)))}) with other folders "
                f"({', '.join(sorted(names - set(LABELED_SPLITS))) or 'no train/'}); use either <class>/ folders "
                "or train/ [val/] test/ folders each holding <class>/ folders")
        splits, layout = {p.name: p for p in top}, "split"
    else:
        splits, layout = {"train": src}, "class"
    plan: Plan = {}
    for split, folder in splits.items():
        classes = {}
        for class_dir in _subdirs(folder, src, skipped):
            files = _scan(class_dir, src, skipped)
            if files:
                classes[_safe_name(class_dir.name, "class")] = (class_dir, files)
        if not classes:
            raise DataImportError(f"{folder}: no class folders with images found")
        plan[split] = classes
    if len(plan["train"]) < 2:
        raise DataImportError(f"{splits['train']}: a labeled folder needs at least 2 class folders")
    for split, classes in plan.items():
        extra = set(classes) - set(plan["train"])
        if extra:
            raise DataImportError(f"{src}/{split}: classes {sorted(extra)} have no images in train/")
    return plan, layout


def _flat_names(files: list[Path], base: Path) -> list[str]:
    """File names for one class folder: nested sub-folders are joined with '__'."""
    names = [_safe_name("__".join(f.relative_to(base).parts), "file") for f in files]
    if len(set(names)) != len(names):
        raise DataImportError(f"{base}: two files map to the same name after flattening sub-folders")
    return names


class SourceChanged(DataImportError):
    """A source file was swapped (for a link, or another file) while the import ran."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # NONBLOCK: a FIFO cannot hang us


def _open_beneath(root: Path, rel: Path) -> int:
    """Open root/rel for reading, one component at a time, never following a link (O_NOFOLLOW on
    every folder and on the file): what is opened lies inside `root`, whatever happens meanwhile."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in rel.parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(rel.parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def copy_checked(path: Path, dest: Path, src: Path) -> None:
    """Copy the source file `path` (inside `src`; a link allowed only when it points inside `src`) to
    a new file `dest`, so that what is copied is what was checked: check the file (lstat, or the
    link's target), open that same path without following links, and compare the opened descriptor's
    inode with the checked one. A file swapped for a link or another file in between is refused."""
    rel_shown = path.relative_to(src)
    real = path.resolve() if path.is_symlink() else path
    if not _inside(real, src):
        raise SourceChanged(f"{rel_shown}: now a link out of the source folder; nothing was imported")
    try:
        checked = os.lstat(real)
        fd = _open_beneath(src, real.relative_to(src))
    except OSError as err:   # ELOOP: a link appeared on the way; ENOENT: it vanished
        raise SourceChanged(f"{rel_shown}: changed while being imported ({os.strerror(err.errno)}); "
                            "nothing was imported, run the import again") from None
    with os.fdopen(fd, "rb") as source:
        opened = os.fstat(source.fileno())
        if not stat.S_ISREG(opened.st_mode):
            raise DataImportError(f"{rel_shown}: not a regular file")
        if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
            raise SourceChanged(f"{rel_shown}: replaced by another file while being imported; nothing was "
                                "imported, run the import again")
        with open(dest, "xb") as target:   # x: a fresh file in our own staging folder
            shutil.copyfileobj(source, target, 1 << 20)


def swap_in(staged: Path, dest: Path, replace: bool) -> None:
    """Move a finished `staged` folder to `dest`; an existing `dest` only goes if replace=True."""
    if dest.exists() or dest.is_symlink():
        if not replace:
            raise DataExistsError(f"{dest} already holds data; pass replace=True (--replace) to overwrite it")
        trash = dest.with_name(f".trash-{dest.name}-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(dest, trash)
        os.rename(staged, dest)
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash)
        else:
            trash.unlink()
    else:
        os.rename(staged, dest)


def import_folder(src: str | Path, kind: Literal["unlabeled", "labeled"], raw_dir: str | Path,
                  progress: Progress | None = None, replace: bool = False,
                  also_unlabeled: bool = False, seed: int = 0) -> dict:
    """Copy `src` into raw_dir/unlabeled or raw_dir/labeled; see the module docstring.

    Returns {"kind", "copied": {dataset_or_split: n_files}, "classes": [...] (labeled),
    "layout": "class"|"split"|"flat", "skipped": [(relative path, reason), ...],
    "test_split": "given"|"carve in prepare" (labeled)}.
    """
    if kind not in ("unlabeled", "labeled"):
        raise DataImportError(f"kind must be 'unlabeled' or 'labeled', got {kind!r}")
    if also_unlabeled and kind != "labeled":
        raise DataImportError("also_unlabeled only applies to kind='labeled'")
    src_given = Path(src)
    if not src_given.is_dir():
        raise DataImportError(f"{src_given}: not a folder")
    src = src_given.resolve()
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw = raw_dir.resolve()
    if _inside(src, raw) or _inside(raw, src):
        raise UnsafePathError(f"{src_given}: overlaps the data directory {raw_dir}; import from a folder outside it")

    targets = ["labeled", "unlabeled"] if also_unlabeled else [kind]
    existing = [t for t in targets if (raw / t).exists()]
    if existing and not replace:
        raise DataExistsError(f"{', '.join(str(raw_dir / t) for t in existing)} already holds data; "
                              "pass replace=True (--replace) to overwrite it")

    skipped: list[tuple[str, str]] = []
    copies: list[tuple[Path, str]] = []  # (source file, destination relative to the staging dir)
    result: dict = {"kind": kind, "skipped": skipped, "copied": {}}
    pool: list[Path] = []
    if kind == "labeled":
        plan, result["layout"] = _labeled_plan(src, skipped)
        result["classes"] = sorted(plan["train"])
        result["test_split"] = "given" if "test" in plan else "carve in prepare"
        for split, classes in plan.items():
            for cls, (class_dir, files) in classes.items():
                for f, name in zip(files, _flat_names(files, class_dir)):
                    copies.append((f, f"labeled/{split}/{cls}/{name}"))
                if split != "test":  # held-out test images never enter the pretraining pool
                    pool += files
            result["copied"][f"labeled/{split}"] = sum(len(files) for _, files in classes.values())
    else:
        pool = _scan(src, src, skipped)
        result["layout"] = "flat"
        if not pool:
            raise DataImportError(f"{src_given}: no image files found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if kind == "unlabeled" or also_unlabeled:
        copies += _unlabeled_names(pool, seed)
        result["copied"]["unlabeled"] = len(pool)

    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=raw))
    try:
        for i, (f, rel) in enumerate(copies):
            dest = (staging / rel)
            if not _inside(dest.resolve(), staging.resolve()):
                raise UnsafePathError(f"{f}: destination {rel} escapes the data directory")
            dest.parent.mkdir(parents=True, exist_ok=True)
            copy_checked(f, dest, src)
            if progress and (i % 200 == 0 or i == len(copies) - 1):
                progress(i + 1, len(copies))
        for t in targets:
            swap_in(staging / t, raw / t, replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _unlabeled_names(pool: list[Path], seed: int) -> list[tuple[Path, str]]:
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    width = max(6, len(str(len(pool))))
    return [(pool[j], f"unlabeled/img_{k + 1:0{width}d}{pool[j].suffix.lower()}") for k, j in enumerate(order)]
