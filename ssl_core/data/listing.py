"""List user image folders: which files are images, and why each other entry is left out.

Decisions (documented here because `prepare` and the README rely on them):
- Supported formats, by extension: PNG, JPEG (.jpg/.jpeg), BMP, TIFF (.tif/.tiff), WebP (when
  PIL has it) and NumPy arrays (.npy, 1-16 bands). GIF (often animated), SVG (vector), HEIC, ICO, PSD and everything else is rejected
  with "unsupported format .xyz"; `images.py` lets PIL parse a file only as these formats.
- Hidden files and folders (name starting with "."; .DS_Store, ._foo.png, .git) are not used and
  are reported once each as Rejected ("hidden file skipped" / "hidden folder skipped") without
  descending into them: nothing disappears without a trace in the quarantine report.
- Symlinks are followed inside the data folder (and into DVC's cache, which links files there with
  cache.type symlink); one escaping it, a broken one, or one to a folder listed anyway is reported instead. Fifos and devices are never opened.
"""
from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import features

EXT_TO_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}
if features.check("webp"):
    EXT_TO_FORMAT[".webp"] = "WEBP"
ARRAY_EXTENSIONS = frozenset({".npy"})          # multi-band arrays (ssl_core/data/bands.py)
IMAGE_EXTENSIONS: frozenset[str] = frozenset(EXT_TO_FORMAT) | ARRAY_EXTENSIONS


@dataclass
class Rejected:
    path: str
    reason: str


def relative_posix(path: Path, root: Path) -> str:
    """`path` relative to `root`, with forward slashes (how reports and manifests name files)."""
    text, prefix = str(path), str(root) + os.sep
    if text.startswith(prefix) and os.sep + ".." not in text:  # fast path for listed files (no Path: it is per file)
        rel = text[len(prefix):]
        return rel if os.sep == "/" else rel.replace(os.sep, "/")
    return Path(os.path.relpath(path, root)).as_posix()


def _identity(folder: Path) -> tuple[int, int]:
    info = os.stat(folder)
    return info.st_dev, info.st_ino


class _Lister:
    """Lists start folders depth-first. Symlinked folders are walked only after every real folder,
    so when a link points at a folder that is listed anyway, the real path wins and the link is
    reported instead of listing the same files twice (this also ends symlink loops)."""

    def __init__(self, root: Path, trusted: tuple[Path, ...] = ()):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: {root}")
        self.root_real = os.path.realpath(self.root)
        # symlinks may also point into these (DVC's cache, when it links files into the workspace)
        self.trusted = tuple(os.path.realpath(t) for t in trusted)
        self.files: list[tuple[Path, str]] = []  # (path, tag: the class name or "")
        self.rejected: list[Rejected] = []
        self._seen: set[tuple[int, int]] = set()  # (device, inode) of listed folders
        self._links: list[tuple[Path, str]] = []

    def reject(self, path: Path, reason: str) -> None:
        self.rejected.append(Rejected(relative_posix(path, self.root), reason))

    def problem(self, entry: os.DirEntry) -> str | None:
        """Why an entry is never used (hidden, broken or escaping link), else None."""
        if entry.name.startswith("."):
            return "hidden folder skipped" if entry.is_dir() else "hidden file skipped"
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            if not os.path.exists(real):
                return "broken symlink"
            inside = [r for r in (self.root_real, *self.trusted) if real == r or real.startswith(r + os.sep)]
            if not inside:
                return "symlink escapes data folder"
        return None

    def run(self, starts: list[tuple[Path, str]]) -> None:
        for folder, tag in starts:
            if folder.is_symlink():
                self._links.append((folder, tag))
            else:
                self._walk(folder, tag)
        while self._links:  # links met inside linked folders join the queue
            link, tag = self._links.pop(0)
            try:
                listed = _identity(link) in self._seen
            except OSError as exc:  # the target vanished since it was seen
                self.reject(link, f"unreadable folder ({exc.strerror or exc})")
                continue
            if listed:
                self.reject(link, "folder already listed (symlink to a listed folder)")
            else:
                self._walk(link, tag)
        # Path order (part by part) without comparing Path objects, per file the slow part of a listing:
        # a NUL separator sorts below every character a name can hold
        self.files.sort(key=lambda item: (str(item[0]).replace(os.sep, "\0"), item[1]))

    def _walk(self, start: Path, tag: str) -> None:
        stack = [start]  # explicit stack: hostile data may nest folders deeper than Python recursion
        while stack:
            folder = stack.pop()
            try:
                self._seen.add(_identity(folder))  # not realpath(): quadratic in folder depth
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                self.reject(folder, f"unreadable folder ({exc.strerror or exc})")
                continue
            for entry in entries:
                path = folder / entry.name   # cheaper than parsing entry.path again, once per file
                try:
                    reason = self.problem(entry)
                    if reason is None and entry.is_dir():
                        if entry.is_symlink():
                            self._links.append((path, tag))
                        else:
                            stack.append(path)
                        continue
                    if reason is None and not stat.S_ISREG(entry.stat().st_mode):
                        reason = "not a regular file"  # a fifo or device would block or never end
                except OSError as exc:
                    reason = f"unreadable entry ({exc.strerror or exc})"
                ext = os.path.splitext(entry.name)[1].lower()
                if reason is None and ext not in IMAGE_EXTENSIONS:
                    reason = f"unsupported format {ext or '(no extension)'}"
                if reason is None:
                    self.files.append((path, tag))
                else:
                    self.reject(path, reason)


def list_unlabeled(root: Path, trusted: tuple[Path, ...] = ()) -> tuple[list[Path], list[Rejected]]:
    """Every supported image file under `root` (recursive, sorted) and what was left out.
    trusted: folders outside `root` that symlinks may point into (DVC's cache)."""
    lister = _Lister(root, trusted)
    lister.run([(lister.root, "")])
    return [path for path, _ in lister.files], lister.rejected


def list_labeled(root: Path, trusted: tuple[Path, ...] = ()) -> tuple[list[tuple[Path, str]], list[str], list[Rejected]]:
    """One subfolder per class (images may sit in nested folders inside it).

    Returns ([(path, class_name)], sorted class names, rejected). Files directly under `root` are
    rejected ("not inside a class folder"); a class folder without a single candidate image file
    is reported ("empty class folder") and is not a class.
    """
    lister = _Lister(root, trusted)
    starts: list[tuple[Path, str]] = []
    for entry in sorted(os.scandir(lister.root), key=lambda e: e.name):
        reason = lister.problem(entry)
        if reason is None and entry.is_dir():
            starts.append((Path(entry.path), entry.name))
        else:
            lister.reject(Path(entry.path), reason or "not inside a class folder")
    lister.run(starts)
    counts = Counter(tag for _, tag in lister.files)
    for folder, tag in starts:
        if counts[tag] == 0:
            lister.reject(folder, "empty class folder")
    return lister.files, sorted(counts), lister.rejected
