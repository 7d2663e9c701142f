"""Validation/test splits carved from the labeled train images, and the label-fraction subsets.

Stable as data grows: an image's split is decided once, by its content hash, and kept.
- The first prepare (or one whose carve settings changed: seed, data.val_fraction, data.test_fraction,
  which folders exist) carves class-balanced and seeded, as before (at least one image per class).
- Later prepares keep the split of every image seen before (the previous manifest, keyed by md5); an
  image new to the set lands in test when hash(seed, md5) < test_fraction, else in val when a second
  hash < val_fraction, else in train: a pure function of its content, whatever else was added or
  removed. So a test image never moves into train or into the pretraining pool.
Label fractions are drawn from the train split (seeded, class-balanced) on every prepare.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ssl_pipeline.errors import StageError


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


def hash_unit(seed: int, what: str, md5: str) -> float:
    """A number in [0, 1) that depends only on (seed, what, md5)."""
    return int(hashlib.sha1(f"{seed}:{what}:{md5}".encode()).hexdigest()[:15], 16) / 16 ** 15


def carve_settings(seed: int, val_fraction: float, test_fraction: float, carve_val: bool, carve_test: bool) -> dict:
    return {"seed": seed, "val_fraction": val_fraction if carve_val else None,
            "test_fraction": test_fraction if carve_test else None}


def minimum_per_class(val_fraction: float | None, test_fraction: float | None) -> int:
    """The fewest images a class needs so that every carved split and train get at least one."""
    for n in range(1, 10_000):
        k_test = min(n, max(1, round(test_fraction * n))) if test_fraction else 0
        rest = n - k_test
        k_val = min(rest, max(1, round(val_fraction * rest))) if val_fraction and rest else 0
        if (not test_fraction or k_test) and (not val_fraction or k_val) and rest - k_val >= 1:
            return n
    raise StageError(f"data.val_fraction ({val_fraction}) and data.test_fraction ({test_fraction}) leave no training "
                     "image in a class of up to 10,000 images: lower them")


def check_enough(labels: np.ndarray, classes: list[str], settings: dict, folder: str) -> None:
    """One sentence when a class is too small for the carve the fractions ask for."""
    need = minimum_per_class(settings["val_fraction"], settings["test_fraction"])
    counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), int)
    small = [(classes[c], int(n)) for c, n in enumerate(counts) if n < need]
    if small:
        parts = [f"data.{k} {settings[k]:g}" for k in ("test_fraction", "val_fraction") if settings[k]]
        names = ", ".join(f"{name!r} ({n})" for name, n in small[:5]) + (" ..." if len(small) > 5 else "")
        raise StageError(f"{folder}: too few usable images per class to carve {' and '.join(parts)}: every class "
                         f"needs at least {need} (one for each carved split and one for train), but {names} "
                         "have fewer; add images, lower the fractions, or give labeled/val and labeled/test folders")


def carve(md5s: list[str], labels: np.ndarray, settings: dict, ledger: dict[str, str]) -> dict[str, np.ndarray]:
    """Positions (into md5s/labels, the usable labeled train-folder images) of train, val and test.

    `ledger` ({md5: split}) is the previous prepare's carve under the same settings, or empty."""
    n = len(md5s)
    out: dict[str, np.ndarray] = {}
    seed, vf, tf = settings["seed"], settings["val_fraction"], settings["test_fraction"]
    if not ledger:   # the first carve: class-balanced, seeded
        rest = np.arange(n)
        if tf:
            out["test"] = balanced_subset(labels, tf, seed + 101)
            rest = np.setdiff1d(rest, out["test"])
        if vf:
            out["val"] = rest[balanced_subset(labels[rest], vf, seed + 202)]
            rest = np.setdiff1d(rest, out["val"])
        out["train"] = rest
        return out
    chosen = []
    for md5 in md5s:
        split = ledger.get(md5)
        if split is None:
            split = ("test" if tf and hash_unit(seed, "test", md5) < tf else
                     "val" if vf and hash_unit(seed, "val", md5) < vf else "train")
        chosen.append(split)
    chosen_arr = np.array(chosen, dtype=object)
    for split in ("train",) + (("val",) if vf else ()) + (("test",) if tf else ()):
        out[split] = np.flatnonzero(chosen_arr == split)
    return out
