"""The sharded uint8 image store: fixed-size raw shard files read through memory maps.

Layout of a store folder:
  index.json          {"format": 1, "shape": [C, H, W], "shards": [{"name": ..., "rows": n}, ...], "extra": {...}}
  shard-00000.u8      n rows of C*H*W bytes each, row after row (nothing else: its size is n*C*H*W)
Rows are numbered across shards in index order. Shards are written once and never changed: new rows
always go into new shard files, and only index.json is replaced (atomically). Why plain numpy memmaps
and not a library format: docs/cache-formats-2026-12-04.md (random batch reads 4x the best library,
bounded-memory streaming writes, byte-identical output, appends that leave old shards alone).

A batch is one gather: row ids -> one numpy fancy index per shard touched (numpy's gather of uint8 rows
measured several times faster than torch's CPU indexing); ssl_core/data/cache.py wraps it for torch.
numpy only: decode workers (processes, Dask) write shards without importing torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ssl_core.fsutil import atomic_write_bytes

INDEX = "index.json"
FORMAT = 1


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.u8"


def rows_per_shard(shape: Sequence[int], shard_bytes: int) -> int:
    """How many rows of `shape` fill a shard of about `shard_bytes` (at least one)."""
    return max(1, int(shard_bytes) // int(np.prod(shape)))


def write_shard(path: Path, rows: Iterable[np.ndarray], shape: Sequence[int]) -> int:
    """Stream `rows` (uint8 arrays of `shape`) into a new shard file at `path`; returns the row count.

    One row is in memory at a time; the file is fsynced before this returns (the caller renames it
    into place and then lists it in the index)."""
    shape = tuple(int(s) for s in shape)
    n = 0
    with open(path, "wb") as fh:
        for row in rows:
            if row.shape != shape or row.dtype != np.uint8:
                raise ValueError(f"shard row {n} is {row.dtype} {row.shape}, expected uint8 {shape}")
            fh.write(np.ascontiguousarray(row).data)
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    return n


class ShardStore:
    """Read access to a store folder: its shape, row count, and gathers of rows by id."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / INDEX
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown store format {index.get('format')!r}; rerun the prepare stage")
        self.shape = tuple(index["shape"])
        self.shards = [(s["name"], int(s["rows"])) for s in index["shards"]]
        self.extra = index.get("extra", {})
        counts = np.array([rows for _, rows in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape))

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            name, rows = self.shards[k]
            self._maps[k] = np.memmap(self.folder / name, dtype=np.uint8, mode="r", shape=(rows, *self.shape))
        return self._maps[k]

    def gather(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 [len(rows), C, H, W] in the order of `rows` (into `out` when given, e.g. pinned memory)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"row ids out of range 0..{len(self) - 1}")
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        for k in np.unique(shard_of):
            where = np.flatnonzero(shard_of == k)
            out[where] = self._map(int(k))[rows[where] - self.starts[k]]
        return out

    def __getstate__(self) -> dict:   # memory maps are reopened in another process, not pickled
        return {**self.__dict__, "_maps": {}}


def commit(folder: Path, shape: Sequence[int], new_shards: list[tuple[str, int]], extra: dict | None = None) -> None:
    """List `new_shards` [(file name, rows)] (already written into `folder`) after the existing ones and
    replace index.json atomically; `extra` replaces the index's free-form metadata when given."""
    folder = Path(folder)
    path = folder / INDEX
    index = json.loads(path.read_text()) if path.exists() else {"format": FORMAT, "shape": list(shape), "shards": [],
                                                                  "extra": {}}
    if tuple(index["shape"]) != tuple(shape):
        raise ValueError(f"{folder}: the store holds {tuple(index['shape'])} rows, not {tuple(shape)}")
    index["shards"] += [{"name": name, "rows": int(rows)} for name, rows in new_shards]
    if extra is not None:
        index["extra"] = extra
    atomic_write_bytes((json.dumps(index, indent=1, sort_keys=True) + "\n").encode(), path)


def append_array(folder: Path, images: np.ndarray, shard_bytes: int = 64 << 20) -> np.ndarray:
    """Append an in-memory uint8 [N, C, H, W] array as new shards; returns the new rows' ids."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = tuple(images.shape[1:])
    first = len(ShardStore(folder)) if (folder / INDEX).exists() else 0
    taken = len(ShardStore(folder).shards) if (folder / INDEX).exists() else 0
    per = rows_per_shard(shape, shard_bytes)
    new = []
    for k, start in enumerate(range(0, len(images), per)):
        name = shard_name(taken + k)
        rows = write_shard(folder / name, iter(images[start:start + per]), shape)
        new.append((name, rows))
    commit(folder, shape, new)
    return np.arange(first, first + len(images), dtype=np.int64)
