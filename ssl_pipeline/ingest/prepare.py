"""Preparing the data cache: decode + validate the raw image folders into uint8 caches, a manifest
and seeded splits (the prepare stage runs this).

Outputs (data/prepared/): unlabeled.pt, train.pt, val.pt, test.pt, meta.json, fractions.json,
manifest.csv; reports/quarantine.csv (every rejected or converted file, with the reason).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_pipeline.config.schema import Params
from ssl_core.data import images as img
from ssl_core.data.listing import Rejected, list_labeled, list_unlabeled
from ssl_core.data.cache import LABELED_SPLITS, SPLITS, save_split
from ssl_pipeline.errors import StageError
from ssl_pipeline.outputs import LEAKAGE_CSV, QUARANTINE_CSV
from ssl_pipeline.progress import Progress, log


def balanced_subset(labels: np.ndarray, fraction: float, seed: int, min_per_class: int = 1) -> np.ndarray:
    """Class-balanced seeded sample of `fraction` of the indices (at least min_per_class per class)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx), max(min_per_class, int(round(fraction * len(idx)))))
        chosen.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def label_fractions(train_labels: np.ndarray, fractions: list[float], seeds: int, base_seed: int) -> dict:
    out: dict[str, dict[str, list[int]]] = {}
    for f in fractions:
        n_seeds = 1 if f >= 1.0 else seeds
        out[f"{f:g}"] = {str(s): (np.arange(len(train_labels)) if f >= 1.0 else
                                  balanced_subset(train_labels, f, base_seed * 1000 + s)).tolist()
                         for s in range(n_seeds)}
    return out


def _relative_to(rejected: list[Rejected], listed_root: Path, raw: Path) -> list[Rejected]:
    """Listing reports paths relative to the folder it listed; quarantine.csv uses data/raw-relative."""
    prefix = listed_root.relative_to(raw) if listed_root.is_relative_to(raw) else listed_root
    return [Rejected(str(prefix / r.path), r.reason) for r in rejected]


def _labeled_dirs(labeled_root: Path) -> dict[str, Path | None]:
    """labeled/ holds train/ [val/] test/ split folders, or class folders directly (all train)."""
    if (labeled_root / "train").is_dir():
        return {s: (labeled_root / s if (labeled_root / s).is_dir() else None) for s in LABELED_SPLITS}
    return {"train": labeled_root, "val": None, "test": None}


def prepare(params: Params, root: Path = Path(".")) -> dict:
    d = params.data
    raw, out = root / d.raw_dir, root / d.prepared_dir
    dirs = _labeled_dirs(raw / "labeled")
    items_by_split: dict[str, list[tuple[Path, int]]] = {}
    rejected: list[Rejected] = []
    class_paths, classes, rej = list_labeled(dirs["train"])
    rejected += _relative_to(rej, dirs["train"], raw)
    if not classes:
        raise StageError(f"no labeled images found under {dirs['train']}: expected one folder per class")
    class_index = {c: i for i, c in enumerate(classes)}
    items_by_split["train"] = [(p, class_index[c]) for p, c in class_paths]
    for split in ("val", "test"):
        if dirs[split] is not None:
            pairs, split_classes, rej = list_labeled(dirs[split])
            rejected += _relative_to(rej, dirs[split], raw)
            unknown = sorted(set(split_classes) - set(classes))
            if unknown:
                raise StageError(f"{dirs[split]} has class folders not in train: {', '.join(unknown)}")
            items_by_split[split] = [(p, class_index[c]) for p, c in pairs]
    unlabeled_paths, rej = list_unlabeled(raw / "unlabeled") if (raw / "unlabeled").is_dir() else ([], [])
    rejected += _relative_to(rej, raw / "unlabeled", raw)
    if d.max_unlabeled and len(unlabeled_paths) > d.max_unlabeled:
        keep = np.sort(np.random.default_rng(params.seed).choice(len(unlabeled_paths), d.max_unlabeled, replace=False))
        unlabeled_paths = [unlabeled_paths[i] for i in keep]
    items_by_split["unlabeled"] = [(p, -1) for p in unlabeled_paths]

    all_paths = [p for items in items_by_split.values() for p, _ in items]
    channels = img.detect_channels(all_paths) if d.channels == "auto" else int(d.channels)
    decoded: dict[str, img.ImageSet] = {}
    for split, items in items_by_split.items():
        bar = Progress(len(items), f"decode {split}")
        decoded[split] = img.decode_images(items, raw, d.image_size, channels, progress=bar.update)
        bar.close()
        rejected += decoded[split].rejected
    train = decoded["train"]
    if len(train.labels) == 0:
        raise StageError(f"no usable labeled training images under {dirs['train']} "
                         f"({len(rejected)} files quarantined, see {QUARANTINE_CSV})")
    splits = _carve_splits(decoded, d, params.seed)
    splits["unlabeled"], pool_counts = pretraining_pool(splits, decoded["unlabeled"], d.pool_includes_labeled)
    _write_outputs(out, splits, decoded, classes, channels, params)
    leaks = img.find_duplicates(splits["train"][2], splits["test"][2])
    _write_reports(root, rejected, decoded, leaks, splits)
    counts = {f"n_{s}": len(splits[s][1]) for s in SPLITS}
    counts.update(pool_counts)
    counts.update(n_quarantined=len(rejected), n_converted=sum(len(s.notes) for s in decoded.values()),
                  n_train_test_duplicates=len(leaks), n_classes=len(classes), channels=channels)
    if leaks:
        log.warning("prepare: %d train/test duplicate images (leakage), listed in %s", len(leaks), LEAKAGE_CSV)
    return {"counts": counts, "classes": classes}


def _carve_splits(decoded: dict[str, img.ImageSet], d, seed: int) -> dict[str, tuple]:
    """(images, labels, hashes, paths) per split; carve test/val from train where no folder exists."""
    def take(s: img.ImageSet, idx) -> tuple:
        idx = np.asarray(idx, dtype=np.int64)
        return (s.images[idx], s.labels[idx], [s.content_hash[i] for i in idx], [s.paths[i] for i in idx])

    train = decoded["train"]
    all_idx = np.arange(len(train.labels))
    splits: dict[str, tuple] = {}
    if "test" in decoded:
        splits["test"] = take(decoded["test"], np.arange(len(decoded["test"].labels)))
    else:
        test_idx = balanced_subset(train.labels, d.test_fraction, seed + 101)
        splits["test"] = take(train, test_idx)
        all_idx = np.setdiff1d(all_idx, test_idx)
    if "val" in decoded:
        splits["val"] = take(decoded["val"], np.arange(len(decoded["val"].labels)))
    else:
        val_rel = balanced_subset(train.labels[all_idx], d.val_fraction, seed + 202)
        splits["val"] = take(train, all_idx[val_rel])
        all_idx = np.setdiff1d(all_idx, all_idx[val_rel])
    splits["train"] = take(train, all_idx)
    return splits


# ---- the pretraining pool (data.pool_includes_labeled; kept apart from the cache code on purpose)
def pretraining_pool(splits: dict[str, tuple], unlabeled: img.ImageSet, include_labeled: bool) -> tuple[tuple, dict]:
    """(images, labels, hashes, paths) to pretrain on, and its counts: the unlabeled images, then, with
    `include_labeled`, the labeled train and val images without their labels. Never a test image (even
    one copied into the unlabeled folder), and each content once: an image in both folders is not
    counted twice, so a pool that already holds the labeled images (the demo's) is left as it is."""
    test_hashes = set(splits["test"][2])
    keep = [i for i, h in enumerate(unlabeled.content_hash) if h not in test_hashes]
    parts = [(unlabeled.images[keep], [unlabeled.content_hash[i] for i in keep], [unlabeled.paths[i] for i in keep])]
    seen, added = set(parts[0][1]) | test_hashes, 0
    for split in ("train", "val") if include_labeled else ():
        images, _, hashes, paths = splits[split]
        new = []
        for i, h in enumerate(hashes):
            if h not in seen:
                seen.add(h)
                new.append(i)
        parts.append((images[new], [hashes[i] for i in new], [paths[i] for i in new]))
        added += len(new)
    if not sum(len(p[1]) for p in parts):
        raise StageError("nothing to pretrain on: no unlabeled images and data.pool_includes_labeled is false; "
                         "import unlabeled images (`ssl-pipeline data import FOLDER --as unlabeled`) or set it to true")
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    hashes, paths = [h for p in parts for h in p[1]], [q for p in parts for q in p[2]]
    counts = {"n_unlabeled_dropped_as_test": len(unlabeled.labels) - len(keep), "n_unlabeled_from_labeled": added}
    return (images, np.full(len(hashes), -1), hashes, paths), counts


def _write_outputs(out: Path, splits: dict, decoded, classes: list[str], channels: int, params: Params) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (images, labels, _, _) in splits.items():
        save_split(out / f"{name}.pt", images, labels if name != "unlabeled" else np.full(len(labels), -1))
    fractions = label_fractions(splits["train"][1], params.data.label_fractions,
                                params.data.small_fraction_seeds, params.seed)
    (out / "fractions.json").write_text(json.dumps(fractions))
    meta = {"classes": classes, "num_classes": len(classes), "channels": channels,
            "image_size": params.data.image_size,
            "counts": {name: int(len(s[1])) for name, s in splits.items()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    rows = [{"split": name, "path": p, "label": int(y), "class": classes[y] if y >= 0 else "", "content_sha1": h}
            for name, (_, labels, hashes, paths) in splits.items()
            for p, y, h in zip(paths, labels, hashes)]
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)


def _write_reports(root: Path, rejected, decoded, leaks, splits) -> None:
    rows = [{"path": r.path, "action": "quarantined", "reason": r.reason} for r in rejected]
    rows += [{"path": n.path, "action": "converted", "reason": n.note} for s in decoded.values() for n in s.notes]
    (root / QUARANTINE_CSV).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["path", "action", "reason"]).to_csv(root / QUARANTINE_CSV, index=False)
    leak_rows = [{"train_path": splits["train"][3][i], "test_path": splits["test"][3][j]} for i, j in leaks]
    pd.DataFrame(leak_rows, columns=["train_path", "test_path"]).to_csv(root / LEAKAGE_CSV, index=False)
