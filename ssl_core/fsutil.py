"""Files that survive crashes and processes that share a workspace: the project's one atomic writer
and its one inter-process lock. Standard library (+ torch for tensors) only."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def atomic_write_bytes(data, path: Path) -> None:
    """Temp file + fsync + rename (+ directory fsync): `path` holds the old bytes or the new, never a part."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **open_args) -> Iterator[IO]:
    """atomic_write_bytes for a file written piece by piece (a manifest of millions of rows is never
    held in memory whole): `path` appears only when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **open_args) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a power cut after os.replace must not lose it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:   # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save through atomic_write_bytes. Serialising in memory first turns a full disk into a
    proper OSError (ENOSPC) instead of an opaque error from torch's C++ writer."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getbuffer(), path)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in blocks (memory stays flat for big weight files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Pretty, key-sorted JSON, written atomically."""
    atomic_write_bytes((json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), Path(path))


class LockBusy(TimeoutError):
    """The lock stayed held by someone else for longer than the caller would wait."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float | None = None, holder: str | None = None,
                   on_wait: Callable[[str], None] | None = None, notice_after: float = 0.0,
                   poll_s: float = 0.05) -> Iterator[None]:
    """Hold an flock on `path` (created if missing) for the block.

    timeout: seconds to wait for another holder (None: as long as it takes; 0: not at all), then
    LockBusy. holder: a line written into the file while held, so waiters can say who holds it.
    on_wait(holder) is called once, when waiting has lasted `notice_after` seconds. Each call opens
    its own file description, so threads of one process exclude each other too."""
    start = time.monotonic()
    told = False
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                current = handle.read().strip() or "unknown holder"
                waited = time.monotonic() - start
                if on_wait and not told and waited >= notice_after and timeout != 0:
                    on_wait(current)
                    told = True
                if timeout is not None and waited >= timeout:
                    raise LockBusy(Path(path), current) from None
                time.sleep(poll_s)
        if holder is not None:
            handle.seek(0)
            handle.truncate()
            handle.write(holder)
            handle.flush()
        try:
            yield
        finally:
            if holder is not None:
                handle.seek(0)
                handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
