"""benchmarks/cache_formats.py: its numpy-memmap shard adapter round-trips, appends without touching
old shards, writes the same bytes twice, and a missing optional library is reported, not fatal."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cache_formats.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cache_formats_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numpy_shards_gather_across_shards(bench, tmp_path):
    synth = bench.Synth((2, 4, 4), seed=0, start=0, stop=12)
    bench.NumpyShards().write(tmp_path, synth, shard=5)
    assert sorted(p.name for p in tmp_path.glob("shard-*.u8")) == [f"shard-0000{i}.u8" for i in range(3)]
    reader = bench.NumpyShards().open(tmp_path)
    idx = np.array([11, 0, 5, 4, 10, 6])
    batch = reader.gather(idx)
    assert len(reader) == 12 and batch.shape == (6, 2, 4, 4)
    assert np.array_equal(batch.numpy(), synth.images(0, 12)[idx])
    assert bench.check_batch(synth, batch.numpy(), idx)


def test_numpy_shards_append_leaves_old_shards_and_is_deterministic(bench, tmp_path):
    synth = bench.Synth((1, 3, 3), seed=1, start=0, stop=7)
    for name in ("a", "b"):
        bench.NumpyShards().write(tmp_path / name, synth, shard=4)
    assert bench.tree_digest(tmp_path / "a") == bench.tree_digest(tmp_path / "b")
    before = bench.tree_digest(tmp_path / "a")
    more = bench.Synth((1, 3, 3), seed=1, start=7, stop=11)
    bench.NumpyShards().append(tmp_path / "a", more, shard=4)
    after = bench.tree_digest(tmp_path / "a")
    assert all(after[name] == digest for name, digest in before.items() if name.endswith(".u8"))
    reader = bench.NumpyShards().open(tmp_path / "a")
    assert len(reader) == 11
    assert np.array_equal(reader.gather(np.arange(11)).numpy(), synth.images(0, 11))


def test_missing_library_is_reported(bench, monkeypatch):
    monkeypatch.setitem(bench.MODULES, "webdataset", "no_such_module_for_cache_bench")
    status = bench.availability("webdataset")
    assert status.startswith("not installed")
    row = bench.markdown_row("webdataset", {"status": status})
    assert row.startswith("| webdataset | not installed")
