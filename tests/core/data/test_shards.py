"""The sharded store against plain numpy: gathers across shards, views, appends that leave old shards
byte-identical, and the prefetched batch source against direct gathers."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ssl_core.data import shards
from ssl_core.data.cache import ShardedImages, Split, load_split, save_split
from ssl_core.training.prefetch import PinnedPrefetcher, batches


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (23, 2, 5, 5), dtype=np.uint8)


def test_gathers_across_shards_match_numpy(tmp_path, images):
    rows = shards.append_array(tmp_path, images, shard_bytes=5 * 50)   # 5 rows a shard
    store = shards.ShardStore(tmp_path)
    assert rows.tolist() == list(range(23)) and len(store) == 23 and len(store.shards) == 5
    assert sorted(p.name for p in tmp_path.glob("*.u8")) == [shards.shard_name(k) for k in range(5)]
    assert all((tmp_path / name).stat().st_size == n * 50 for name, n in store.shards)
    idx = np.array([22, 0, 5, 4, 5, 13])
    assert np.array_equal(store.gather(idx), images[idx])
    view = ShardedImages(store, np.arange(23)[::-1])
    assert tuple(view.shape) == (23, 2, 5, 5) and view.nbytes == images.nbytes
    assert torch.equal(view[torch.tensor([0, 3])], torch.from_numpy(images[[22, 19]]))
    assert torch.equal(view[2:6], torch.from_numpy(images[::-1][2:6].copy()))
    assert torch.equal(view[::7], torch.from_numpy(images[::-1][::7].copy()))
    sub = view.take([1, 2])
    assert torch.equal(sub[torch.arange(2)], torch.from_numpy(images[[21, 20]]))
    assert torch.equal(view.to("cpu"), torch.from_numpy(images[::-1].copy()))
    with pytest.raises(IndexError):
        store.gather(np.array([23]))


def test_append_leaves_old_shards_byte_identical(tmp_path, images):
    shards.append_array(tmp_path, images[:12], shard_bytes=5 * 50)
    before = {p.name: digest(p) for p in tmp_path.glob("*.u8")}
    rows = shards.append_array(tmp_path, images[12:], shard_bytes=5 * 50)
    assert rows.tolist() == list(range(12, 23))
    assert {name: digest(tmp_path / name) for name in before} == before
    assert np.array_equal(shards.ShardStore(tmp_path).gather(np.arange(23)), images)


def test_splits_save_and_load_through_the_store(tmp_path, images):
    save_split(tmp_path / "train.pt", images[:10], np.arange(10))
    save_split(tmp_path / "val.pt", images[10:], np.zeros(13))
    train, val = load_split(tmp_path, "train"), load_split(tmp_path, "val")
    assert isinstance(train.images, ShardedImages) and len(val) == 13
    assert torch.equal(val.images[torch.arange(13)], torch.from_numpy(images[10:]))
    subset = train.subset([3, 1])
    assert isinstance(subset.images, ShardedImages) and subset.labels.tolist() == [3, 1]
    assert torch.equal(subset.images[[0, 1]], torch.from_numpy(images[[3, 1]]))
    in_memory = Split(torch.from_numpy(images), torch.arange(23)).subset([2])
    assert torch.equal(in_memory.images, torch.from_numpy(images[[2]]))


@pytest.mark.parametrize("as_store", [True, False])
def test_prefetched_batches_equal_direct_gathers(tmp_path, images, as_store):
    rows = shards.append_array(tmp_path, images, 100)
    source = ShardedImages(shards.ShardStore(tmp_path), rows) if as_store else torch.from_numpy(images)
    order = torch.randperm(23, generator=torch.Generator().manual_seed(1))
    indices = [order[i:i + 4] for i in range(0, 20, 4)]
    got = list(PinnedPrefetcher(source, indices, torch.device("cpu"), depth=2, pin=False))
    assert len(got) == 5
    for idx, batch in zip(indices, got):   # every batch survives the buffers being reused
        assert torch.equal(batch, torch.from_numpy(images[idx.numpy()]))
    direct = list(batches(source, indices, torch.device("cpu"), prefetch=False))
    assert all(torch.equal(a, b) for a, b in zip(direct, got))


def test_prefetch_errors_reach_the_training_thread(tmp_path, images):
    rows = shards.append_array(tmp_path, images, 100)
    source = ShardedImages(shards.ShardStore(tmp_path), rows)
    bad = [torch.tensor([0, 1]), torch.tensor([99])]
    it = iter(PinnedPrefetcher(source, bad, torch.device("cpu"), pin=False))
    next(it)
    with pytest.raises(IndexError):
        next(it)
