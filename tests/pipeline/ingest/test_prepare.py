"""prepare: splits, label fractions, quarantine and leakage on real image folders."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ssl_pipeline.config.schema import load_params
from ssl_core.data.cache import load_fractions, load_meta, load_split
from ssl_pipeline.ingest.prepare import prepare
from ssl_pipeline.ingest.splits import balanced_subset, label_fractions
from workspace import class_image, write_params


def test_balanced_subset_is_seeded_class_balanced_and_at_least_one_per_class():
    labels = np.repeat(np.arange(4), 50)
    a = balanced_subset(labels, 0.1, seed=3)
    assert np.array_equal(a, balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(a, balanced_subset(labels, 0.1, seed=4))
    assert np.bincount(labels[a]).tolist() == [5, 5, 5, 5]
    assert np.bincount(labels[balanced_subset(labels, 0.001, seed=0)]).tolist() == [1, 1, 1, 1]


def test_label_fractions_have_several_seeds_only_for_small_fractions():
    labels = np.repeat(np.arange(3), 20)
    fr = label_fractions(labels, [0.1, 1.0], seeds=3, base_seed=0)
    assert list(fr["0.1"]) == ["0", "1", "2"] and list(fr["1"]) == ["0"]
    assert fr["1"]["0"] == list(range(60))
    assert len({tuple(v) for v in fr["0.1"].values()}) == 3


@pytest.fixture
def raw_tree(tmp_path):
    """Class folders only (no train/test split given) plus hostile extras and an unlabeled pool."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "data/raw"
    for c in range(3):
        folder = raw / "labeled" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(30):
            Image.fromarray(class_image(c, rng, 16, False)).save(folder / f"{i}.png")
    (raw / "labeled" / "c0" / "broken.png").write_bytes(b"not a png")
    (raw / "labeled" / "c1" / "empty.jpg").write_bytes(b"")
    Image.fromarray(class_image(0, rng, 16, False)).save(raw / "labeled" / "stray.png")
    (raw / "unlabeled").mkdir(parents=True)
    for i in range(20):
        Image.fromarray(class_image(i % 3, rng, 16, False)).save(raw / "unlabeled" / f"u{i}.png")
    return tmp_path


def test_prepare_carves_splits_quarantines_and_reports(raw_tree):
    write_params(raw_tree, {"data.test_fraction": 0.2, "data.val_fraction": 0.1})
    params = load_params(raw_tree / "params.yaml")
    summary = prepare(params, raw_tree)
    c = summary["counts"]
    assert (c["n_train"], c["n_val"], c["n_test"]) == (66, 6, 18)   # 90 good images: 18 test, then 2 per class val
    assert c["n_quarantined"] == 3 and c["channels"] == 1 and c["n_classes"] == 3
    out = raw_tree / "data/prepared"
    train, test = load_split(out, "train"), load_split(out, "test")
    assert train.images.dtype == torch.uint8 and tuple(train.images.shape[1:]) == (1, 16, 16)
    assert np.bincount(test.labels.numpy()).tolist() == [6, 6, 6]
    quarantine = pd.read_csv(raw_tree / "reports/quarantine.csv")
    assert set(quarantine.path) == {"labeled/c0/broken.png", "labeled/c1/empty.jpg", "labeled/stray.png"}
    manifest = pd.read_csv(out / "manifest.csv")
    train_paths, test_paths = set(manifest[manifest.split == "train"].path), set(manifest[manifest.split == "test"].path)
    assert not train_paths & test_paths
    assert load_meta(out)["classes"] == ["c0", "c1", "c2"]
    assert set(load_fractions(out)) == {"0.25", "1"}


def test_prepare_reports_train_test_leakage_and_keeps_test_out_of_the_unlabeled_pool(raw_tree):
    raw = raw_tree / "data/raw"
    labeled = raw / "labeled"
    for split in ("train", "test"):
        (labeled / split).mkdir()
    for c in ("c0", "c1", "c2"):
        (labeled / c).rename(labeled / "train" / c)
        (labeled / "test" / c).mkdir()
        files = sorted((labeled / "train" / c).glob("*.png"))
        for f in files[:5]:
            f.rename(labeled / "test" / c / f.name)
    dup = sorted((labeled / "test" / "c2").glob("*.png"))[0]
    (labeled / "train" / "c2" / "dup.png").write_bytes(dup.read_bytes())
    (raw / "unlabeled" / "test_copy.png").write_bytes(dup.read_bytes())
    write_params(raw_tree, {})
    summary = prepare(load_params(raw_tree / "params.yaml"), raw_tree)
    assert summary["counts"]["n_train_test_duplicates"] == 1
    assert summary["counts"]["n_unlabeled_dropped_as_test"] == 1
    leaks = pd.read_csv(raw_tree / "reports/leakage.csv")
    assert leaks.iloc[0].train_path.endswith("dup.png")


def test_prepare_fails_with_one_sentence_when_nothing_usable(tmp_path):
    folder = tmp_path / "data/raw/labeled/c0"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"garbage")
    (tmp_path / "data/raw/unlabeled").mkdir()
    write_params(tmp_path, {})
    with pytest.raises(Exception, match="no usable labeled training images"):
        prepare(load_params(tmp_path / "params.yaml"), tmp_path)


def test_the_pool_is_the_unlabeled_images_plus_the_labeled_ones_each_once_never_test(raw_tree):
    """data.pool_includes_labeled: the labeled train/val images join the pool without their labels."""
    raw = raw_tree / "data/raw"
    shared = sorted((raw / "labeled" / "c1").glob("*.png"))[3]
    (raw / "unlabeled" / "shared.png").write_bytes(shared.read_bytes())   # in both folders: pretrained on once
    write_params(raw_tree, {"data.test_fraction": 0.2, "data.val_fraction": 0.1})
    c = prepare(load_params(raw_tree / "params.yaml"), raw_tree)["counts"]
    assert c["n_unlabeled"] == 20 + 66 + 6 and c["n_unlabeled_from_labeled"] == 72 - (1 - c["n_unlabeled_dropped_as_test"])
    manifest = pd.read_csv(raw_tree / "data/prepared/manifest.csv")
    pool, test = manifest[manifest.split == "unlabeled"], manifest[manifest.split == "test"]
    assert pool.content_sha1.is_unique and not set(pool.content_sha1) & set(test.content_sha1)
    assert set(pool.path) >= set(manifest[manifest.split.isin(["train", "val"])].path) - {f"labeled/c1/{shared.name}"}
    assert (pool["class"].isna() | (pool["class"] == "")).all()

    write_params(raw_tree, {"data.pool_includes_labeled": False})
    c = prepare(load_params(raw_tree / "params.yaml"), raw_tree)["counts"]
    assert c["n_unlabeled"] == 21 - c["n_unlabeled_dropped_as_test"] and c["n_unlabeled_from_labeled"] == 0


def test_labeled_data_alone_is_the_pool_unless_switched_off(raw_tree):
    raw = raw_tree / "data/raw"
    for f in (raw / "unlabeled").iterdir():
        f.unlink()   # an empty unlabeled dataset, as after a labeled-only import
    write_params(raw_tree, {"data.test_fraction": 0.2, "data.val_fraction": 0.1})
    c = prepare(load_params(raw_tree / "params.yaml"), raw_tree)["counts"]
    assert c["n_unlabeled"] == c["n_train"] + c["n_val"] == 72
    write_params(raw_tree, {"data.pool_includes_labeled": False})
    with pytest.raises(Exception, match="nothing to pretrain on.*data.pool_includes_labeled"):
        prepare(load_params(raw_tree / "params.yaml"), raw_tree)
