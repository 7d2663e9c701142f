"""Image files for the data tests: random pixels saved with PIL, and rejection reasons by path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ssl_core.data.listing import Rejected

RNG = np.random.default_rng(0)


def rgb(h: int = 8, w: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)
    return path


def reasons(rejected: list[Rejected]) -> dict[str, str]:
    return {r.path: r.reason for r in rejected}


def got_reason(rejected: list[Rejected], path: str) -> str:
    return reasons(rejected)[path]
