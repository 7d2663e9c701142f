"""The prepared image store as prepare keeps it: which file contents it already holds, and adding the new.

Each decoded image is keyed by the md5 of its file plus the decode settings: one store per settings
digest (data.image_size, resize, channels, size limit, per-channel ranges), rows keyed by md5 inside
it. Every shard has a sidecar (shard-NNNNN.json) listing its rows' md5, pixel sha1 and conversion
notes, and the md5s it rejected with their reason, so a later prepare decodes only contents it has
never seen and reports the old rejections again without reading those files. Rows of removed images
stay in their shards (old shards are never rewritten); a change of settings starts a new store.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ssl_core.data import shards
from ssl_core.data.decode_task import ShardTask, decode_shard
from ssl_core.data.images import DecodeSettings
from ssl_core.fsutil import write_json


@dataclass
class Known:
    """What the store holds: md5 -> (row id, pixel sha1, notes), and md5 -> rejection reason."""
    rows: dict[str, tuple[int, str, list[str]]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    shards: int = 0
    decoded: int = 0   # files decoded by this prepare (the rest were reused)


def sidecar(name: str) -> str:
    return name.replace(".u8", ".json")


def store_extra(folder: Path) -> dict:
    path = Path(folder) / shards.INDEX
    return json.loads(path.read_text()).get("extra", {}) if path.exists() else {}


def load_known(folder: Path, settings: DecodeSettings) -> Known:
    """The store's contents when it was built with `settings`; otherwise it is emptied."""
    folder = Path(folder)
    if store_extra(folder).get("digest") != settings.digest():
        shutil.rmtree(folder, ignore_errors=True)
        return Known()
    store = shards.ShardStore(folder)
    known = Known(shards=len(store.shards))
    for k, (name, _) in enumerate(store.shards):
        meta = json.loads((folder / sidecar(name)).read_text())
        start = int(store.starts[k])
        for i, (md5, pixel_sha1, notes) in enumerate(meta["rows"]):
            known.rows.setdefault(md5, (start + i, pixel_sha1, notes))
        known.rejected.update({md5: why for md5, why in meta["rejected"]})
    return known


def add_new(folder: Path, settings: DecodeSettings, files: list[tuple[str, str]], known: Known, runner: Callable,
            shard_bytes: int, done: Callable[[int], None], note: dict | None = None) -> int:
    """Decode `files` [(path, md5)] (contents the store lacks) into new shards; returns the task count.
    done(n) is called with the number of files decoded so far, as shard tasks finish; `note` is kept in
    the index beside the settings (e.g. the percentiles the ranges came from).

    The files are cut into shard tasks in the given order before anything runs, so the shards' bytes
    are the same whatever runs them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (settings.channels, settings.image_size, settings.image_size)
    per = shards.rows_per_shard(shape, shard_bytes)
    tasks = [ShardTask(str(folder), shards.shard_name(known.shards + k), tuple(files[i:i + per]), settings)
             for k, i in enumerate(range(0, len(files), per))]
    if not tasks:
        if not (folder / shards.INDEX).exists():
            shards.commit(folder, shape, [], extra=_extra(settings, note))
        return 0
    results = runner(decode_shard, tasks, lambda n: done(min(len(files), n * per)))
    first = len(shards.ShardStore(folder)) if (folder / shards.INDEX).exists() else 0
    new = []
    for result in results:
        write_json(folder / sidecar(result.name), {"rows": result.rows, "rejected": result.rejected})
        for i, (md5, pixel_sha1, notes) in enumerate(result.rows):
            known.rows.setdefault(md5, (first + i, pixel_sha1, notes))
        known.rejected.update(dict(result.rejected))
        first += len(result.rows)
        new.append((result.name, len(result.rows)))
    shards.commit(folder, shape, new, extra=_extra(settings, note))
    known.shards += len(new)
    known.decoded += len(files)
    return len(tasks)


def _extra(settings: DecodeSettings, note: dict | None) -> dict:
    return {**(note or {}), "digest": settings.digest(), "settings": asdict(settings)}
