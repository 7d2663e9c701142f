"""Preparing the data cache: list the raw folders, hash them, decode what is new into the sharded uint8
store, carve stable splits, and write the split row lists, a manifest and the reports.

Outputs (data/prepared/): store/ (shards + index), <split>.rows.npy / .labels.npy, meta.json,
fractions.json, manifest.csv; reports/quarantine.csv (every rejected or converted file, with the
reason, written before any error that points at it) and reports/leakage.csv.
Memory: one image per decode worker plus per-file bookkeeping (paths, md5s); never the pixels of a set.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_core.data import images as img
from ssl_core.data.cache import LABELED_SPLITS, SPLITS, STORE_DIR, load_meta, write_split_rows
from ssl_core.data.listing import Rejected, list_labeled, list_unlabeled, relative_posix
from ssl_core.fsutil import atomic_open, atomic_write_bytes, write_json
from ssl_pipeline.config.schema import Params
from ssl_pipeline.errors import StageError
from ssl_pipeline.ingest import hashing, prepared_store as store, splits, workers
from ssl_pipeline.ingest.decode_settings import decode_settings
from ssl_pipeline.outputs import LEAKAGE_CSV, QUARANTINE_CSV
from ssl_pipeline.progress import Progress, log

def _relative_to(rejected: list[Rejected], listed_root: Path, raw: Path) -> list[Rejected]:
    """Listing reports paths relative to the folder it listed; quarantine.csv uses data/raw-relative."""
    prefix = listed_root.relative_to(raw) if listed_root.is_relative_to(raw) else listed_root
    return [Rejected(str(prefix / r.path), r.reason) for r in rejected]


def _labeled_dirs(labeled_root: Path) -> dict[str, Path | None]:
    """labeled/ holds train/ [val/] test/ split folders, or class folders directly (all train)."""
    if (labeled_root / "train").is_dir():
        return {s: (labeled_root / s if (labeled_root / s).is_dir() else None) for s in LABELED_SPLITS}
    return {"train": labeled_root, "val": None, "test": None}


def list_raw(params: Params, root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str], list[Rejected]]:
    """The image files of every folder: {"train"|"val"|"test"|"unlabeled": [(path, label)]}, classes, rejected."""
    d = params.data
    raw = root / d.raw_dir
    dirs = _labeled_dirs(raw / "labeled")
    items: dict[str, list[tuple[Path, int]]] = {}
    trusted = (root / ".dvc" / "cache",)   # DVC links files from there when cache.type is symlink
    class_paths, classes, rej = list_labeled(dirs["train"], trusted)
    rejected = _relative_to(rej, dirs["train"], raw)
    if not classes:
        raise StageError(f"no labeled images found under {dirs['train']}: expected one folder per class")
    class_index = {c: i for i, c in enumerate(classes)}
    items["train"] = [(p, class_index[c]) for p, c in class_paths]
    for split in ("val", "test"):
        if dirs[split] is not None:
            pairs, split_classes, rej = list_labeled(dirs[split], trusted)
            rejected += _relative_to(rej, dirs[split], raw)
            unknown = sorted(set(split_classes) - set(classes))
            if unknown:
                raise StageError(f"{dirs[split]} has class folders not in train: {', '.join(unknown)}")
            items[split] = [(p, class_index[c]) for p, c in pairs]
    unlabeled, rej = list_unlabeled(raw / "unlabeled", trusted) if (raw / "unlabeled").is_dir() else ([], [])
    rejected += _relative_to(rej, raw / "unlabeled", raw)
    if d.max_unlabeled and len(unlabeled) > d.max_unlabeled:
        keep = np.sort(np.random.default_rng(params.seed).choice(len(unlabeled), d.max_unlabeled, replace=False))
        unlabeled = [unlabeled[i] for i in keep]
    items["unlabeled"] = [(p, -1) for p in unlabeled]
    return items, classes, rejected


@dataclasses.dataclass
class Decoded:
    """One folder's usable images after decoding (in listing order)."""
    rows: list[int] = dataclasses.field(default_factory=list)
    labels: list[int] = dataclasses.field(default_factory=list)
    paths: list[str] = dataclasses.field(default_factory=list)
    md5s: list[str] = dataclasses.field(default_factory=list)
    pixel_sha1: list[str] = dataclasses.field(default_factory=list)


def decode_all(params: Params, root: Path, items: dict, rejected: list[Rejected]) -> tuple[dict, store.Known, dict]:
    """Hash every file, decode the contents the store lacks, and sort the results back per folder."""
    d, p = params.data, params.prepare
    raw, folder = root / d.raw_dir, root / d.prepared_dir / STORE_DIR
    paths = [path for folder_items in items.values() for path, _ in folder_items]
    with workers.runner(p.workers, p.dask_address) as run:
        md5s, sources = hashing.content_md5s(root, raw, paths, run)
        settings = decode_settings(params, items, md5s, folder, run)
        known = store.load_known(folder, settings)
        new, seen = [], set()
        for path, md5 in zip(paths, md5s):
            if md5 and md5 not in known.rows and md5 not in known.rejected and md5 not in seen:
                seen.add(md5)
                new.append((str(path), md5))
        log.info("prepare: %d of %d files are new contents to decode (%s)", len(new), len(paths), run.where)
        bar = Progress(len(new), "decode")
        store.add_new(folder, settings, new, known, run, p.shard_mb << 20, done=bar.update,
                      note={"percentiles": list(d.range_percentiles)})
        bar.close()
    decoded: dict[str, Decoded] = {}
    notes: list[tuple[str, str]] = []
    position = 0
    for split, folder_items in items.items():
        out = decoded[split] = Decoded()
        for path, label in folder_items:
            rel, md5 = relative_posix(path, raw), md5s[position]
            position += 1
            if md5 is None:
                rejected.append(Rejected(rel, "unreadable file"))
            elif md5 in known.rejected:
                rejected.append(Rejected(rel, known.rejected[md5]))
            else:
                row, pixel_sha1, file_notes = known.rows[md5]
                for column, value in (("rows", row), ("labels", label), ("paths", rel), ("md5s", md5),
                                      ("pixel_sha1", pixel_sha1)):
                    getattr(out, column).append(value)
                notes += [(rel, n) for n in file_notes]
    info = {"md5_sources": sources, "n_decoded": known.decoded, "n_reused": len(paths) - known.decoded,
            "settings": settings}
    return decoded, known, {**info, "notes": notes}


def prepare(params: Params, root: Path = Path(".")) -> dict:
    d = params.data
    raw, out = root / d.raw_dir, root / d.prepared_dir
    items, classes, rejected = list_raw(params, root)
    decoded, known, info = decode_all(params, root, items, rejected)
    write_quarantine(root, rejected, info["notes"])   # first: every error below points at it
    train = decoded["train"]
    if not train.rows:
        raise StageError(f"no usable labeled training images under {raw / 'labeled'} "
                         f"({len(rejected)} files quarantined, see {QUARANTINE_CSV})")
    chosen = choose_splits(params, out, decoded, classes)
    chosen["unlabeled"], pool_counts = pretraining_pool(chosen, decoded["unlabeled"], d.pool_includes_labeled)
    write_outputs(params, out, chosen, classes, info)
    leaks = img.find_duplicates(chosen["train"].pixel_sha1, chosen["test"].pixel_sha1)
    leak_rows = [{"train_path": chosen["train"].paths[i], "test_path": chosen["test"].paths[j]} for i, j in leaks]
    pd.DataFrame(leak_rows, columns=["train_path", "test_path"]).to_csv(root / LEAKAGE_CSV, index=False)
    counts = {f"n_{s}": len(chosen[s].rows) for s in SPLITS}
    counts.update(pool_counts)
    counts.update(n_quarantined=len(rejected), n_converted=len(info["notes"]), n_train_test_duplicates=len(leaks),
                  n_classes=len(classes), channels=info["settings"].channels, n_decoded=info["n_decoded"],
                  n_reused=info["n_reused"], n_store_rows=len(known.rows),
                  **{f"n_md5_from_{k}": v for k, v in info["md5_sources"].items()})
    if leaks:
        log.warning("prepare: %d train/test duplicate images (leakage), listed in %s", len(leaks), LEAKAGE_CSV)
    return {"counts": counts, "classes": classes, "channel_ranges": info["settings"].ranges}


def _ledger(out: Path, settings: dict) -> dict[str, str]:
    """The previous prepare's carve ({md5: split}) when it was made with the same carve settings."""
    try:
        previous = load_meta(out).get("carve")
        manifest = pd.read_csv(out / "manifest.csv", usecols=["split", "content_md5"])
    except (OSError, ValueError, KeyError):
        return {}
    if previous != settings:
        return {}
    labeled = manifest[manifest.split.isin(LABELED_SPLITS)]
    return dict(zip(labeled.content_md5, labeled.split))


def choose_splits(params: Params, out: Path, decoded: dict[str, Decoded], classes: list[str]) -> dict[str, Decoded]:
    d = params.data
    settings = splits.carve_settings(params.seed, d.val_fraction, d.test_fraction,
                                     carve_val="val" not in decoded, carve_test="test" not in decoded)
    train = decoded["train"]
    labels = np.asarray(train.labels, dtype=np.int64)
    splits.check_enough(labels, classes, settings, str(Path(d.raw_dir) / "labeled"))
    carved = splits.carve(train.md5s, labels, settings, _ledger(out, settings))
    chosen = {s: _take(train, carved[s]) for s in carved}
    chosen.update({s: decoded[s] for s in ("val", "test") if s in decoded})
    if np.any(np.bincount(chosen["train"].labels, minlength=len(classes)) == 0):
        splits.check_enough(np.zeros(0, np.int64), classes, settings, str(Path(d.raw_dir) / "labeled"))
    chosen["carve"] = settings
    return chosen


def pretraining_pool(chosen: dict[str, Decoded], unlabeled: Decoded, include_labeled: bool) -> tuple[Decoded, dict]:
    """The images to pretrain on, and its counts: the unlabeled images, then, with `include_labeled`
    (data.pool_includes_labeled), the labeled train and val images without their labels. Never a test image
    (even one copied into the unlabeled folder), and each content once: an image in both folders is not
    counted twice, so a pool that already holds the labeled images (the demo's) is left as it is. Rows of
    the store, not pixels: the pool costs a list of row ids, whatever it holds."""
    test_pixels = set(chosen["test"].pixel_sha1)
    keep = [i for i, h in enumerate(unlabeled.pixel_sha1) if h not in test_pixels]
    parts = [_take(unlabeled, keep)]
    seen, added = set(parts[0].pixel_sha1) | test_pixels, 0
    for split in ("train", "val") if include_labeled else ():
        new = []
        for i, h in enumerate(chosen[split].pixel_sha1):
            if h not in seen:
                seen.add(h)
                new.append(i)
        parts.append(_take(chosen[split], new))
        added += len(new)
    pool = Decoded(*([v for part in parts for v in getattr(part, f.name)] for f in dataclasses.fields(Decoded)))
    if not pool.rows:
        raise StageError("nothing to pretrain on: no unlabeled images and data.pool_includes_labeled is false; "
                         "import unlabeled images (`ssl-pipeline data import FOLDER --as unlabeled`) or set it to true")
    pool.labels = [-1] * len(pool.rows)
    return pool, {"n_unlabeled_dropped_as_test": len(unlabeled.rows) - len(keep), "n_unlabeled_from_labeled": added}


def _take(s: Decoded, idx) -> Decoded:
    idx = [int(i) for i in idx]
    return Decoded(*([getattr(s, f.name)[i] for i in idx] for f in dataclasses.fields(Decoded)))


def write_outputs(params: Params, out: Path, chosen: dict, classes: list[str], info: dict) -> None:
    settings = info["settings"]
    for name in SPLITS:
        s = chosen[name]
        write_split_rows(out, name, np.asarray(s.rows, np.int64),
                         np.full(len(s.rows), -1) if name == "unlabeled" else np.asarray(s.labels, np.int64))
    fractions = splits.label_fractions(np.asarray(chosen["train"].labels, np.int64), params.data.label_fractions,
                                       params.data.small_fraction_seeds, params.seed)
    # insertion order kept (fractions ascending, seeds 0..n-1): the finetune stage's cells follow it
    atomic_write_bytes(json.dumps(fractions).encode(), out / "fractions.json")
    for legacy in out.glob("*.pt"):   # the one-tensor-per-split cache of earlier versions
        legacy.unlink()
    write_json(out / "meta.json", {
        "classes": classes, "num_classes": len(classes), "channels": settings.channels,
        "image_size": settings.image_size, "resize": settings.resize,
        "channel_ranges": [list(r) for r in settings.ranges] if settings.ranges else None,
        "decode_settings": settings.digest(), "carve": chosen["carve"],
        "counts": {name: len(chosen[name].rows) for name in SPLITS}})
    # streamed row by row (one row in memory, not a table of the whole set), and atomically: with DVC's
    # hard links, writing into the old file in place would change DVC's cached copy
    with atomic_open(out / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["split", "path", "label", "class", "content_md5", "content_sha1", "row"])
        for name in SPLITS:
            s = chosen[name]
            writer.writerows((name, p, int(y), classes[y] if y >= 0 else "", m, h, r)
                             for p, y, m, h, r in zip(s.paths, s.labels, s.md5s, s.pixel_sha1, s.rows))


def write_quarantine(root: Path, rejected: list[Rejected], notes: list[tuple[str, str]]) -> None:
    (root / QUARANTINE_CSV).parent.mkdir(parents=True, exist_ok=True)
    with open(root / QUARANTINE_CSV, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "action", "reason"])
        writer.writerows((r.path, "quarantined", r.reason) for r in rejected)
        writer.writerows((path, "converted", note) for path, note in notes)
