"""The prepared data cache: one uint8 tensor file per split, loaded memory-mapped.

A split file holds {"images": uint8 [N, C, S, S], "labels": int64 [N]} (labels -1 when unlabeled)
and is read with weights_only=True, so nothing in it is unpickled as code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssl_core.fsutil import atomic_torch_save

LABELED_SPLITS = ("train", "val", "test")   # also the folder names of a labeled set with its own splits
SPLITS = ("unlabeled",) + LABELED_SPLITS


@dataclass
class Split:
    images: torch.Tensor   # uint8 [N, C, S, S]
    labels: torch.Tensor   # int64 [N]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.images[idx], self.labels[idx])


def save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    atomic_torch_save({"images": torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                       "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64))}, path)


def load_split(prepared_dir: Path, name: str) -> Split:
    path = Path(prepared_dir) / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
    data = torch.load(path, weights_only=True, mmap=True)
    return Split(data["images"], data["labels"])


def load_meta(prepared_dir: Path) -> dict:
    return json.loads((Path(prepared_dir) / "meta.json").read_text())


def load_fractions(prepared_dir: Path) -> dict[str, dict[str, list[int]]]:
    """{fraction: {seed: [indices into train]}} written by prepare."""
    return json.loads((Path(prepared_dir) / "fractions.json").read_text())
