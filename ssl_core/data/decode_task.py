"""The units of work of `prepare`, run in a process pool or on Dask workers (numpy + PIL, no torch):

- decode_shard: decode a fixed list of files into one new shard file, streaming (one image in memory).
  The list is fixed before any worker starts, so the shard's bytes never depend on the worker count.
- hash_files: md5 of file contents (the cache key of a decoded image, with the decode settings).
- sample_deep_pixels: pixel samples of sources deeper than 8 bits, for the per-channel ranges.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssl_core.data import bands
from ssl_core.data.images import DecodeSettings, decode_file, load_pil, read_bands, read_file, reason, tiff_beyond_pil
from ssl_core.data.pil_convert import DEEP_MODES, convert_mode
from ssl_core.data.shards import write_shard


@dataclass(frozen=True)
class ShardTask:
    folder: str                 # the store folder (shared by every worker: a local or network filesystem)
    name: str                   # the shard file to write
    files: tuple[tuple[str, str], ...]   # (absolute path, cache key) in row order
    settings: DecodeSettings


@dataclass
class ShardResult:
    name: str
    rows: list[tuple[str, str, list[str]]] = field(default_factory=list)   # (key, pixel sha1, notes) per row
    rejected: list[tuple[str, str]] = field(default_factory=list)          # (key, reason)


def decode_shard(task: ShardTask) -> ShardResult:
    """Decode task.files into task.folder/task.name (written under a temporary name, then renamed)."""
    result = ShardResult(task.name)
    shape = (task.settings.channels, task.settings.image_size, task.settings.image_size)

    def rows():
        for path, key in task.files:
            try:
                pixels, notes = decode_file(Path(path), task.settings)
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the shard
                result.rejected.append((key, reason(exc)))
                continue
            result.rows.append((key, hashlib.sha1(pixels.tobytes()).hexdigest(), notes))
            yield pixels

    final = Path(task.folder) / task.name
    partial = final.with_name(f".{task.name}.partial-{os.getpid()}")
    try:
        write_shard(partial, rows(), shape)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return result


def file_md5(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: tuple[str, ...]) -> list[str | None]:
    """md5 per file (None when it cannot be read: the decoder then reports why)."""
    out: list[str | None] = []
    for path in paths:
        try:
            out.append(file_md5(path))
        except OSError:
            out.append(None)
    return out


def sample_deep_pixels(paths: tuple[str, ...], settings: DecodeSettings, per_image: int = 1024) -> list[np.ndarray]:
    """[C, n] float samples of every file deeper than 8 bits that has settings.channels bands."""
    samples = []
    for path in paths:
        p = Path(path)
        try:
            data = read_file(p)
            if p.suffix.lower() == ".npy" or (p.suffix.lower() in (".tif", ".tiff") and tiff_beyond_pil(data)):
                array, _ = read_bands(data, p, settings)
            else:
                array = _pil_deep(data, p, settings)
        except Exception:  # noqa: BLE001 - unreadable here: the decoder quarantines it with the reason
            continue
        if array is not None and array.dtype != np.uint8 and array.shape[0] == settings.channels:
            samples.append(bands.sample_pixels(array, per_image))
    return samples


def _pil_deep(data: bytes, path: Path, settings: DecodeSettings) -> np.ndarray | None:
    im, _ = load_pil(data, path, settings, [])
    return convert_mode(im, []) if im.mode in DEEP_MODES else None
