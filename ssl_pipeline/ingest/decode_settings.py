"""The decode settings of a prepare: image size, resize policy, channel count, size limit, and the
per-channel ranges that map sources deeper than 8 bits onto 0..255.

- Channels (data.channels: auto): judged on the 200 files whose md5 hashes lowest (the same files
  keep being chosen as data grows, so the answer does not flip from one prepare to the next).
- Ranges: each channel's data.range_percentiles over pixel samples of up to RANGE_FILES deep files of
  the training pool (data/raw/unlabeled, or the labeled train folder when there is none). Measured
  when the cache is built with new settings and then kept, so a re-prepare reuses every decoded row;
  recorded in meta.json and the prepare stage's MLflow run.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from ssl_core.data import bands
from ssl_core.data.decode_task import sample_deep_pixels
from ssl_core.data.images import DecodeSettings, detect_channels
from ssl_pipeline.config.schema import Params
from ssl_pipeline.ingest import prepared_store
from ssl_pipeline.ingest.splits import hash_unit
from ssl_pipeline.progress import log

CHANNEL_SAMPLE = 200
RANGE_FILES = 256
_MAYBE_DEEP = (".npy", ".tif", ".tiff", ".png")


def _lowest(paths: list[Path], md5s: list[str | None], count: int, seed: int, what: str) -> list[Path]:
    keyed = sorted((hash_unit(seed, what, m), str(p)) for p, m in zip(paths, md5s) if m)
    return [Path(p) for _, p in keyed[:count]]


def decode_settings(params: Params, items: dict[str, list[tuple[Path, int]]], md5s: list[str | None],
                    folder: Path, run) -> DecodeSettings:
    d = params.data
    paths = [p for folder_items in items.values() for p, _ in folder_items]
    if d.channels == "auto":
        channels = detect_channels(_lowest(paths, md5s, CHANNEL_SAMPLE, 0, "channels"), sample=CHANNEL_SAMPLE)
    else:
        channels = int(d.channels)
    base = DecodeSettings(d.image_size, channels, d.resize, d.max_megapixels)
    extra = prepared_store.store_extra(folder)
    old = extra.get("settings") or {}
    if old and {**old, "ranges": None} == dataclasses.asdict(base) and extra.get("percentiles") == list(d.range_percentiles):
        ranges = old["ranges"]
        return dataclasses.replace(base, ranges=tuple(tuple(r) for r in ranges) if ranges else None)
    pool_name = "unlabeled" if items.get("unlabeled") else "train"
    offset = sum(len(v) for k, v in items.items() if list(items).index(k) < list(items).index(pool_name))
    pool = [(p, md5s[offset + i]) for i, (p, _) in enumerate(items[pool_name]) if p.suffix.lower() in _MAYBE_DEEP]
    chosen = _lowest([p for p, _ in pool], [m for _, m in pool], RANGE_FILES, params.seed, "range")
    tasks = [tuple(str(p) for p in chosen[k:k + 32]) for k in range(0, len(chosen), 32)]
    # a partial of a torch-free ssl_core function: a worker unpickles it without importing this package
    # (and torch through the schema), which would add that import's memory to every worker
    samples = [s for batch in run(functools.partial(sample_deep_pixels, settings=base), tasks) for s in batch]
    if not samples:
        return base
    ranges = tuple(bands.measure_ranges(samples, tuple(d.range_percentiles)))
    log.info("prepare: per-channel ranges of the deep sources (%d files of the %s pool, percentiles %s): %s",
             len(samples), pool_name, list(d.range_percentiles), [[round(a, 4), round(b, 4)] for a, b in ranges])
    return dataclasses.replace(base, ranges=ranges)
