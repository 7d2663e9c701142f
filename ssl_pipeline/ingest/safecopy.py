"""Copy one file of a user's folder so that what is copied is what was checked.

sources.py decides which files an import reads (nothing outside the source, no links out, no fifos). Between
that check and the copy, a file can be swapped for a link to somewhere else; a plain `copyfile` would then
read the outside file. `copy_checked` opens the path one component at a time without following links and
compares the opened file with the checked one, so a swap is refused instead of copied.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from ssl_pipeline.ingest.store import DataImportError, inside

__all__ = ["SourceChanged", "copy_checked"]


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
    a new file `dest`: check the file (lstat, or the link's target), open that same path without
    following links, and compare the opened descriptor's inode with the checked one. A file swapped
    for a link or another file in between is refused with SourceChanged."""
    rel_shown = path.relative_to(src)
    real = path.resolve() if path.is_symlink() else path
    if not inside(real, src):
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
