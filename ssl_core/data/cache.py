"""The prepared data cache: a sharded uint8 image store plus one row list per split.

prepared_dir/
  store/                 the shards (ssl_core/data/shards.py): every decoded image once
  <split>.rows.npy       int64 row ids into the store, in the split's order
  <split>.labels.npy     int64 labels (-1 for the unlabeled pool)
  meta.json, fractions.json
A split loads as a Split whose images gather from the memory-mapped shards on indexing, so memory
does not grow with the number of images. .npy files are read with allow_pickle=False.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssl_core.data.shards import ShardStore, append_array
from ssl_core.fsutil import atomic_write_bytes

LABELED_SPLITS = ("train", "val", "test")   # also the folder names of a labeled set with its own splits
SPLITS = ("unlabeled",) + LABELED_SPLITS
STORE_DIR = "store"


class ShardedImages:
    """A uint8 [N, C, H, W] "tensor" backed by a store: the rows `ids` of `store`, in that order.

    Indexing (int tensor, array, list or slice) gathers those rows into a real CPU tensor; take()
    makes a smaller view without reading anything. Memory is what the caller gathers, plus the page
    cache the kernel manages: the store is never loaded whole (except by .to(), for a GPU copy)."""

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, store: ShardStore, ids: np.ndarray):
        self.store = store
        self.ids = np.asarray(ids, dtype=np.int64)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.ids), *self.store.shape))

    @property
    def nbytes(self) -> int:
        return len(self.ids) * self.store.row_bytes

    def __len__(self) -> int:
        return len(self.ids)

    def dim(self) -> int:
        return 4

    def _positions(self, idx) -> np.ndarray:
        if isinstance(idx, slice):
            return np.arange(len(self.ids))[idx]
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return np.asarray(idx, dtype=np.int64).reshape(-1)

    def take(self, idx) -> "ShardedImages":
        return ShardedImages(self.store, self.ids[self._positions(idx)])

    def gather_into(self, idx, out: torch.Tensor) -> torch.Tensor:
        """Gather the rows at positions `idx` into the CPU tensor `out` (e.g. a pinned buffer)."""
        rows = self.ids[self._positions(idx)]
        self.store.gather(rows, out.numpy()[:len(rows)])
        return out[:len(rows)]

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            return self[[int(idx)]][0]
        return torch.from_numpy(self.store.gather(self.ids[self._positions(idx)]))

    def to(self, device, non_blocking: bool = False) -> torch.Tensor:
        """The whole view as one tensor on `device`, copied in chunks of about 64 MB."""
        device = torch.device(device)
        out = torch.empty(tuple(self.shape), dtype=torch.uint8, device=device)
        step = max(1, (64 << 20) // max(self.store.row_bytes, 1))
        for start in range(0, len(self), step):
            out[start:start + step] = self[start:start + step].to(device)
        return out


@dataclass
class Split:
    images: torch.Tensor | ShardedImages   # uint8 [N, C, S, S]
    labels: torch.Tensor                   # int64 [N]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx) -> "Split":
        """The samples at `idx`; a sharded split stays sharded (nothing is read until a batch is)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        images = self.images.take(idx) if isinstance(self.images, ShardedImages) else self.images[idx]
        return Split(images, self.labels[idx])


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(buffer.getbuffer(), path)


def write_split_rows(prepared_dir: Path, name: str, rows: np.ndarray, labels: np.ndarray) -> None:
    """A split as row ids into the store and their labels (each file replaced atomically)."""
    prepared_dir = Path(prepared_dir)
    _save_npy(prepared_dir / f"{name}.rows.npy", np.asarray(rows, dtype=np.int64))
    _save_npy(prepared_dir / f"{name}.labels.npy", np.asarray(labels, dtype=np.int64))


def save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write in-memory images as split `path.stem` of the cache in `path.parent` (tests, small tools):
    the images are appended to the store as new shards."""
    path = Path(path)
    rows = append_array(path.parent / STORE_DIR, np.ascontiguousarray(images, dtype=np.uint8))
    write_split_rows(path.parent, path.stem, rows, labels)


def load_split(prepared_dir: Path, name: str, store: ShardStore | None = None) -> Split:
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / f"{name}.rows.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
    store = store or ShardStore(prepared_dir / STORE_DIR)
    rows = np.load(path, allow_pickle=False)
    labels = np.load(prepared_dir / f"{name}.labels.npy", allow_pickle=False)
    return Split(ShardedImages(store, rows), torch.from_numpy(labels))


def load_meta(prepared_dir: Path) -> dict:
    return json.loads((Path(prepared_dir) / "meta.json").read_text())


def load_fractions(prepared_dir: Path) -> dict[str, dict[str, list[int]]]:
    """{fraction: {seed: [indices into train]}} written by prepare."""
    return json.loads((Path(prepared_dir) / "fractions.json").read_text())
