"""Seeded synthetic photos for the data benchmark: JPEGs of mixed sizes and aspect ratios.

Image i depends only on (seed, i): smooth colour fields (a random 6x6 grid, bicubically enlarged) with
a little blocky texture, 120-800 px per side, JPEG quality 90. Written by a process pool, in blocks.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

BLOCK = 500


def photo(seed: int, i: int, low: int = 120, high: int = 800) -> Image.Image:
    rng = np.random.default_rng([seed, i])
    w, h = (int(v) for v in rng.integers(low, high + 1, 2))
    grid = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    # texture: a small noise tile enlarged (per-pixel noise at full size made writing the set the slow part)
    texture = Image.fromarray(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8))
    return Image.blend(grid, texture.resize((w, h), Image.Resampling.NEAREST), 0.15)


def _write_block(job: tuple[str, int, int, int, str]) -> int:
    folder, seed, start, stop, prefix = job
    for i in range(start, stop):
        photo(seed, i).save(Path(folder) / f"{prefix}{i:07d}.jpg", quality=90)
    return stop - start


def write_photos(folder: Path, start: int, stop: int, seed: int, workers: int, prefix: str = "img_",
                 progress: Callable[[int], None] | None = None) -> None:
    """Images start..stop-1 as folder/<prefix><i>.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), seed, a, min(a + BLOCK, stop), prefix) for a in range(start, stop, BLOCK)]
    done = 0
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for n in pool.map(_write_block, jobs):
            done += n
            if progress:
                progress(done)


def write_labeled(folder: Path, classes: int, per_class: int, seed: int) -> None:
    """A small labeled set: class c's images are tinted towards colour c (learnable, not the point here)."""
    for c in range(classes):
        out = folder / f"class{c}"
        out.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = np.asarray(photo(seed + 1 + c, i), dtype=np.int16)
            image[..., c % 3] = np.clip(image[..., c % 3] + 60, 0, 255)
            Image.fromarray(image.astype(np.uint8)).save(out / f"{i:05d}.jpg", quality=90)
